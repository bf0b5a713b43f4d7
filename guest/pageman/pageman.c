// SPDX-License-Identifier: GPL-2.0
/*
 * Pageman: exact-fit page manager.
 *
 * Registers with the kernel's Pageman hooks (include/linux/pageman.h).
 * Fit&Free: of a fresh 2^order block whose caller needs r pages, keep
 * exactly r and free the rest as whole aligned blocks, halving from the
 * top.  Free&Fit: free the r kept pages as whole aligned blocks, halving
 * the same way.  Each fitted block has a record (r and order) keyed by its
 * head pfn; every live record holds a module reference, so the module
 * cannot be unloaded while a free is still owed (rmmod fails with EBUSY).
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/atomic.h>
#include <linux/gfp.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/pageman.h>
#include <linux/proc_fs.h>
#include <linux/seq_file.h>
#include <linux/xarray.h>

#define RECORD_ORDER_BITS 6
/*
 * A record is allocated in the caller's context: keep only the caller's
 * freedom to sleep and do I/O, and never warn, as failing only means the
 * block stays vanilla.
 */
#define RECORD_GFP_MASK (__GFP_RECLAIM | __GFP_IO | __GFP_FS | __GFP_HIGH)

static DEFINE_XARRAY(records);

static atomic_long_t fitted_allocs;
static atomic_long_t fitted_frees;
static atomic_long_t live;
static atomic_long_t pages_kept;
static atomic_long_t pages_saved;

/*
 * Give back a naturally aligned block of split pages as one buddy block:
 * the tail pages drop the reference split_page() gave them, as the buddy
 * allocator expects only the head of a block to hold one.
 */
static void free_split_block(struct page *page, unsigned int order)
{
	unsigned long i;

	for (i = 1; i < (1UL << order); i++)
		if (WARN_ON_ONCE(!page_ref_dec_and_test(page + i)))
			return;	/* still in use elsewhere: leak, never corrupt */
	__free_pages(page, order);
}

/* Fit&Free: keep [0, need) of the block, free the rest top-down. */
static void fit_and_free(struct page *page, unsigned int order,
			 unsigned long need)
{
	unsigned long base = 0;

	while (need < (1UL << order)) {
		unsigned long half = 1UL << --order;

		if (need <= half) {
			free_split_block(page + base + half, order);
		} else {
			base += half;
			need -= half;
		}
	}
}

/* Free&Fit: free the kept pages [0, need) as whole aligned blocks. */
static void free_and_fit(struct page *page, unsigned int order,
			 unsigned long need)
{
	unsigned long base = 0;

	for (;;) {
		unsigned long half;

		if (need == (1UL << order)) {
			free_split_block(page + base, order);
			return;
		}
		half = 1UL << --order;
		if (need > half) {
			free_split_block(page + base, order);
			base += half;
			need -= half;
		}
	}
}

static unsigned long pageman_fit_block(struct page *page, unsigned int order,
				       size_t size, gfp_t gfp)
{
	unsigned long need = DIV_ROUND_UP(size, PAGE_SIZE);
	unsigned long value = need << RECORD_ORDER_BITS | order;
	void *old;

	if (!need || need >= (1UL << order))
		return 0;
	old = xa_store(&records, page_to_pfn(page), xa_mk_value(value),
		       (gfp & RECORD_GFP_MASK) | __GFP_NOWARN);
	if (xa_is_err(old))
		return 0;	/* no memory for the record: stay vanilla */
	WARN_ON_ONCE(old);

	__module_get(THIS_MODULE);
	split_page(page, order);
	fit_and_free(page, order, need);

	atomic_long_inc(&fitted_allocs);
	atomic_long_inc(&live);
	atomic_long_add(need, &pages_kept);
	atomic_long_add((1UL << order) - need, &pages_saved);
	return need;
}

static unsigned long pageman_free_block(struct page *page)
{
	void *entry = xa_erase(&records, page_to_pfn(page));
	unsigned long value, need;

	if (!entry)
		return 0;
	value = xa_to_value(entry);
	need = value >> RECORD_ORDER_BITS;
	free_and_fit(page, value & ((1UL << RECORD_ORDER_BITS) - 1), need);

	atomic_long_inc(&fitted_frees);
	atomic_long_dec(&live);
	atomic_long_sub(need, &pages_kept);
	module_put(THIS_MODULE);
	return need;
}

static unsigned long pageman_kept_pages(struct page *page)
{
	void *entry = xa_load(&records, page_to_pfn(page));

	return entry ? xa_to_value(entry) >> RECORD_ORDER_BITS : 0;
}

static const struct pageman_ops pageman_ops = {
	.owner = THIS_MODULE,
	.fit = pageman_fit_block,
	.free = pageman_free_block,
	.kept = pageman_kept_pages,
};

/* Records in the store, counted there: a record left behind shows. */
static unsigned long records_stored(void)
{
	unsigned long index, n = 0;
	void *entry;

	xa_for_each(&records, index, entry)
		n++;
	return n;
}

static int pageman_stats_show(struct seq_file *m, void *v)
{
	seq_printf(m, "fitted_allocs %ld\n", atomic_long_read(&fitted_allocs));
	seq_printf(m, "fitted_frees %ld\n", atomic_long_read(&fitted_frees));
	seq_printf(m, "live %ld\n", atomic_long_read(&live));
	seq_printf(m, "pages_kept %ld\n", atomic_long_read(&pages_kept));
	seq_printf(m, "pages_saved %ld\n", atomic_long_read(&pages_saved));
	seq_printf(m, "records %lu\n", records_stored());
	return 0;
}

static int __init pageman_init(void)
{
	int ret;

	if (!proc_create_single("pageman", 0444, NULL, pageman_stats_show))
		return -ENOMEM;
	ret = pageman_register(&pageman_ops);
	if (ret)
		remove_proc_entry("pageman", NULL);
	return ret;
}

static void __exit pageman_exit(void)
{
	pageman_unregister(&pageman_ops);
	remove_proc_entry("pageman", NULL);
}

module_init(pageman_init);
module_exit(pageman_exit);
MODULE_DESCRIPTION("Pageman: exact-fit page manager");
MODULE_LICENSE("GPL");
