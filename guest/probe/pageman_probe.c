// SPDX-License-Identifier: GPL-2.0
/*
 * pageman_probe: allocation probes for pageman-harness.
 *
 * Write one request to /proc/pageman_probe, then read the reply from the
 * same open file.  Requests:
 *
 *   alloc PATH SIZE [NODE]   PATH is kmalloc, kmalloc_node, kmalloc_large,
 *                            kmalloc_large_node, pages_exact or
 *                            pages_exact_nid
 *   free HANDLE [SIZE]       kfree, or free_pages_exact with SIZE (default:
 *                            the allocation's size)
 *   snapshot                 free blocks per order only
 *   bench N PATH SIZE [NODE] allocate and free N times through PATH, and
 *                            reply the nanoseconds it took (bench_ns)
 *   info                     page size, orders, KMALLOC_MAX_CACHE_SIZE and
 *                            online nodes, for the harness's model
 *   fault KIND               break the kernel on purpose, so the harness's
 *                            own tests can show it reports a broken kernel:
 *                            warn (WARN), oops (NULL dereference), hang
 *                            (spin with preemption off) or block (sleep
 *                            uninterruptibly for good)
 *
 * Each reply gives the free blocks per order, summed over all zones, just
 * before and just after the request, with the per-CPU page lists drained
 * both times so the counts are exact.  An allocation's reply names the
 * block it took (head pfn, get_order() of the size, node of the head
 * page).  Objects are named by handle and by page frame number; no kernel
 * pointer leaves the module.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/gfp.h>
#include <linux/kernel.h>
#include <linux/ktime.h>
#include <linux/mm.h>
#include <linux/mmzone.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/proc_fs.h>
#include <linux/slab.h>
#include <linux/string.h>
#include <linux/uaccess.h>

/*
 * The number of buddy orders, whatever MAX_ORDER means in this kernel (it
 * became inclusive in 6.4 and was renamed in 6.8): the zone's own array.
 */
#define PROBE_ORDERS ARRAY_SIZE(((struct zone *)NULL)->free_area)

#define PROBE_SLOTS 256
#define PROBE_REPLY_SIZE 1024
#define PROBE_REQUEST_SIZE 128
#define PROBE_GFP (GFP_KERNEL | __GFP_NOWARN)

enum probe_path {
	PATH_KMALLOC,
	PATH_KMALLOC_NODE,
	PATH_KMALLOC_LARGE,
	PATH_KMALLOC_LARGE_NODE,
	PATH_PAGES_EXACT,
	PATH_PAGES_EXACT_NID,
};

static const char *const path_names[] = {
	[PATH_KMALLOC] = "kmalloc",
	[PATH_KMALLOC_NODE] = "kmalloc_node",
	[PATH_KMALLOC_LARGE] = "kmalloc_large",
	[PATH_KMALLOC_LARGE_NODE] = "kmalloc_large_node",
	[PATH_PAGES_EXACT] = "pages_exact",
	[PATH_PAGES_EXACT_NID] = "pages_exact_nid",
};

/*
 * A handle is a slot and the slot's generation, so that a stale handle (a
 * double free) is refused even after its slot has been reused.
 */
struct probe_object {
	void *ptr;
	size_t size;
	enum probe_path path;
	unsigned int gen;
};

static struct probe_object objects[PROBE_SLOTS];
static DEFINE_MUTEX(probe_lock);

struct probe_reply {
	char buf[PROBE_REPLY_SIZE];
	size_t len;
};

static __printf(2, 3) void reply_add(struct probe_reply *r, const char *fmt,
				     ...)
{
	va_list args;

	va_start(args, fmt);
	r->len += vscnprintf(r->buf + r->len, sizeof(r->buf) - r->len, fmt,
			     args);
	va_end(args);
}

/*
 * Unreclaimable slab memory in bytes, exactly: the node counters plus the
 * per-CPU differences not yet folded into them (/proc/meminfo shows only
 * the folded part, which lags by up to a threshold per CPU).
 */
static long slab_unreclaimable_bytes(void)
{
	long pages = 0;
	int nid, cpu;

	for_each_online_node(nid) {
		pg_data_t *pgdat = NODE_DATA(nid);

		pages += atomic_long_read(&pgdat->vm_stat[NR_SLAB_UNRECLAIMABLE_B]);
		for_each_online_cpu(cpu)
			pages += per_cpu_ptr(pgdat->per_cpu_nodestats, cpu)
					 ->vm_node_stat_diff[NR_SLAB_UNRECLAIMABLE_B];
	}
	return pages << PAGE_SHIFT;
}

/*
 * Free blocks per order over all zones, after draining per-CPU lists, and
 * the unreclaimable slab bytes, as "KEY counts..." and "sunreclaim_KEY".
 */
static void reply_free_blocks(struct probe_reply *r, const char *key)
{
	unsigned long counts[PROBE_ORDERS] = { 0 };
	unsigned int order;
	struct zone *zone;
	int nid;

	drain_all_pages(NULL);
	reply_add(r, "sunreclaim_%s %ld\n", key, slab_unreclaimable_bytes());
	for_each_online_node(nid) {
		pg_data_t *pgdat = NODE_DATA(nid);

		for (zone = pgdat->node_zones;
		     zone < pgdat->node_zones + MAX_NR_ZONES; zone++) {
			unsigned long flags;

			if (!populated_zone(zone))
				continue;
			spin_lock_irqsave(&zone->lock, flags);
			for (order = 0; order < PROBE_ORDERS; order++)
				counts[order] += zone->free_area[order].nr_free;
			spin_unlock_irqrestore(&zone->lock, flags);
		}
	}
	reply_add(r, "free_%s", key);
	for (order = 0; order < PROBE_ORDERS; order++)
		reply_add(r, " %lu", counts[order]);
	reply_add(r, "\n");
	/*
	 * Mark the moment of the count in the trace: kfree(NULL) emits a kfree
	 * event and nothing else.  Page events between the two marks of a
	 * request are what the free counts saw change.
	 */
	kfree(NULL);
}

static void *probe_alloc(enum probe_path path, size_t size, int node)
{
	switch (path) {
	case PATH_KMALLOC:
		return kmalloc(size, PROBE_GFP);
	case PATH_KMALLOC_NODE:
		return kmalloc_node(size, PROBE_GFP, node);
	case PATH_KMALLOC_LARGE:
		return kmalloc_large(size, PROBE_GFP);
	case PATH_KMALLOC_LARGE_NODE:
		return kmalloc_large_node(size, PROBE_GFP, node);
	case PATH_PAGES_EXACT:
		return alloc_pages_exact(size, PROBE_GFP);
	case PATH_PAGES_EXACT_NID:
		return alloc_pages_exact_nid(node, size, PROBE_GFP);
	}
	return NULL;
}

static bool is_kmalloc_path(enum probe_path path)
{
	return path != PATH_PAGES_EXACT && path != PATH_PAGES_EXACT_NID;
}

static void probe_free(enum probe_path path, void *ptr, size_t size)
{
	if (is_kmalloc_path(path))
		kfree(ptr);
	else
		free_pages_exact(ptr, size);
}

struct alloc_request {
	enum probe_path path;
	size_t size;
	int node;
};

/* Parse "PATH SIZE [NODE]", refusing what the callee must not be given. */
static int parse_alloc_request(char *args, struct alloc_request *req)
{
	char *name = strsep(&args, " ");
	char *size_arg = strsep(&args, " ");
	int path;

	if (!name || !size_arg)
		return -EINVAL;
	path = match_string(path_names, ARRAY_SIZE(path_names), name);
	if (path < 0)
		return path;
	req->path = path;
	req->node = NUMA_NO_NODE;
	if (kstrtoul(size_arg, 0, &req->size) || !req->size)
		return -EINVAL;
	if (args && kstrtoint(args, 0, &req->node))
		return -EINVAL;
	if (req->node != NUMA_NO_NODE &&
	    (req->node < 0 || req->node >= MAX_NUMNODES ||
	     !node_online(req->node)))
		return -EINVAL;
	if ((path == PATH_KMALLOC_LARGE || path == PATH_KMALLOC_LARGE_NODE) &&
	    req->size <= KMALLOC_MAX_CACHE_SIZE)
		return -EINVAL;	/* the callee assumes a large size */
	if (path == PATH_PAGES_EXACT_NID && req->node == NUMA_NO_NODE)
		req->node = numa_mem_id();
	return 0;
}

static int do_alloc(struct probe_reply *r, char *args)
{
	struct alloc_request req;
	int slot, ret;
	void *ptr;

	ret = parse_alloc_request(args, &req);
	if (ret)
		return ret;

	for (slot = 0; slot < PROBE_SLOTS && objects[slot].ptr; slot++)
		;
	if (slot == PROBE_SLOTS)
		return -ENOSPC;

	reply_free_blocks(r, "before");
	ptr = probe_alloc(req.path, req.size, req.node);
	reply_free_blocks(r, "after");
	if (!ptr)
		return -ENOMEM;

	objects[slot] = (struct probe_object){ ptr, req.size, req.path,
					       objects[slot].gen + 1 };
	reply_add(r, "handle %u\npfn 0x%lx\norder %u\nnid %d\n",
		  objects[slot].gen * PROBE_SLOTS + slot,
		  page_to_pfn(virt_to_page(ptr)), get_order(req.size),
		  page_to_nid(virt_to_page(ptr)));
	return 0;
}

/* The cost of N allocations and frees through one path, for benchmarks. */
static int do_bench(struct probe_reply *r, char *args)
{
	char *n_arg = strsep(&args, " ");
	struct alloc_request req;
	unsigned long i, n;
	u64 start;
	int ret;

	if (!n_arg || kstrtoul(n_arg, 0, &n) || !n || n > 1000000)
		return -EINVAL;
	ret = parse_alloc_request(args, &req);
	if (ret)
		return ret;
	start = ktime_get_ns();
	for (i = 0; i < n; i++) {
		void *ptr = probe_alloc(req.path, req.size, req.node);

		if (!ptr)
			return -ENOMEM;
		probe_free(req.path, ptr, req.size);
		cond_resched();
	}
	reply_add(r, "bench_ns %llu\nbench_n %lu\n", ktime_get_ns() - start, n);
	return 0;
}

static int do_free(struct probe_reply *r, char *args)
{
	char *handle_arg = strsep(&args, " ");
	struct probe_object *obj;
	unsigned int handle, slot;
	size_t size;

	if (!handle_arg || kstrtouint(handle_arg, 0, &handle))
		return -EINVAL;
	slot = handle % PROBE_SLOTS;
	if (!objects[slot].ptr || objects[slot].gen != handle / PROBE_SLOTS)
		return -ENOENT;	/* unknown handle or double free */
	obj = &objects[slot];
	size = obj->size;
	if (args && (kstrtoul(args, 0, &size) || !size))
		return -EINVAL;

	reply_add(r, "pfn 0x%lx\n", page_to_pfn(virt_to_page(obj->ptr)));
	reply_free_blocks(r, "before");
	probe_free(obj->path, obj->ptr, size);
	reply_free_blocks(r, "after");
	obj->ptr = NULL;
	return 0;
}

static int do_fault(const char *kind)
{
	static int *nowhere;
	int *p;

	if (!kind)
		return -EINVAL;
	if (!strcmp(kind, "warn")) {
		WARN(1, "pageman_probe: fault injected on request");
		return 0;
	}
	if (!strcmp(kind, "oops")) {
		p = READ_ONCE(nowhere);	/* NULL, unknown to the compiler */
		*p = 1;
		return 0;
	}
	if (!strcmp(kind, "hang")) {
		preempt_disable();
		for (;;)
			cpu_relax();
	}
	if (!strcmp(kind, "block")) {
		for (;;)
			schedule_timeout_uninterruptible(MAX_SCHEDULE_TIMEOUT);
	}
	return -EINVAL;
}

static int probe_execute(struct probe_reply *r, char *request)
{
	char *verb = strsep(&request, " ");

	if (!strcmp(verb, "alloc"))
		return do_alloc(r, request);
	if (!strcmp(verb, "free"))
		return do_free(r, request);
	if (!strcmp(verb, "snapshot") && !request) {
		reply_free_blocks(r, "after");
		return 0;
	}
	if (!strcmp(verb, "fault"))
		return do_fault(request);
	if (!strcmp(verb, "bench"))
		return do_bench(r, request);
	if (!strcmp(verb, "info") && !request) {
		reply_add(r, "page_size %lu\nkmalloc_max_cache_size %lu\nnodes %u\n",
			  PAGE_SIZE, (unsigned long)KMALLOC_MAX_CACHE_SIZE,
			  num_online_nodes());
		return 0;
	}
	return -EINVAL;
}

static ssize_t probe_write(struct file *file, const char __user *ubuf,
			   size_t count, loff_t *ppos)
{
	struct probe_reply *r = file->private_data;
	char request[PROBE_REQUEST_SIZE];
	int ret;

	if (count >= sizeof(request))
		return -EINVAL;
	if (copy_from_user(request, ubuf, count))
		return -EFAULT;
	request[count] = '\0';
	strim(request);

	mutex_lock(&probe_lock);
	r->len = 0;
	reply_add(r, "orders %zu\n", PROBE_ORDERS);
	ret = probe_execute(r, request);
	mutex_unlock(&probe_lock);
	reply_add(r, "status %d\n", ret);
	return count;
}

static ssize_t probe_read(struct file *file, char __user *ubuf, size_t count,
			  loff_t *ppos)
{
	struct probe_reply *r = file->private_data;

	return simple_read_from_buffer(ubuf, count, ppos, r->buf, r->len);
}

static int probe_open(struct inode *inode, struct file *file)
{
	file->private_data = kzalloc(sizeof(struct probe_reply), GFP_KERNEL);
	return file->private_data ? 0 : -ENOMEM;
}

static int probe_release(struct inode *inode, struct file *file)
{
	kfree(file->private_data);
	return 0;
}

static const struct proc_ops probe_ops = {
	.proc_open = probe_open,
	.proc_read = probe_read,
	.proc_write = probe_write,
	.proc_release = probe_release,
	.proc_lseek = noop_llseek,
};

static int __init probe_init(void)
{
	if (!proc_create("pageman_probe", 0600, NULL, &probe_ops))
		return -ENOMEM;
	return 0;
}

/* Objects still held are freed so that unloading leaks nothing. */
static void __exit probe_exit(void)
{
	int slot;

	remove_proc_entry("pageman_probe", NULL);
	for (slot = 0; slot < PROBE_SLOTS; slot++) {
		if (objects[slot].ptr)
			probe_free(objects[slot].path, objects[slot].ptr,
				   objects[slot].size);
	}
}

module_init(probe_init);
module_exit(probe_exit);
MODULE_DESCRIPTION("Allocation probes for pageman-harness");
MODULE_LICENSE("GPL");
