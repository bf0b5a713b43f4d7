// SPDX-License-Identifier: GPL-2.0
/*
 * seed_pageman: Pageman as the seed's project describes it, a known-bad
 * subject for the harness (SUBJECT=seed).  Never load it on a real system.
 *
 * It pairs with guest/patches/seed/, the seed report's kernel changes.
 * While loaded it sets is_pageman_loaded; the kernel then leaves the
 * block to fit in the globals gb_start_address, gb_order and gb_size and
 * calls make_alloc_exact(), which this module takes over through an
 * ftrace function hook found with kallsyms_lookup_name().  Fit&Free keeps
 * the pages needed and frees the rest as whole sub-blocks with
 * __free_pages(), and records the pages kept in pages_metadata_table.
 * free_pages_exact() is taken over the same way: a recorded block is freed
 * by Free&Fit, halving the same way, with __free_pages().
 *
 * The faults are the design's and are kept on purpose: the globals are
 * shared by every CPU without a lock, sub-blocks are freed through pages
 * that hold no reference (only the head of a fresh block does), a
 * __GFP_COMP block from kmalloc is trimmed like any other, and kfree()
 * knows nothing of the record.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/atomic.h>
#include <linux/ftrace.h>
#include <linux/gfp.h>
#include <linux/kallsyms.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/proc_fs.h>
#include <linux/seq_file.h>

static atomic_long_t fitted_allocs, fitted_frees, live, pages_kept, pages_saved;

/* Fit&Free, as the project describes it, on the block left in the globals. */
static void *seed_make_alloc_exact(unsigned long addr, unsigned int order,
				   size_t size)
{
	unsigned long need = DIV_ROUND_UP(gb_size, PAGE_SIZE);
	unsigned int cur = gb_order;
	unsigned long base = 0;
	struct page *page;

	if (!gb_start_address)
		return NULL;
	page = virt_to_page((void *)gb_start_address);
	set_nr_pages_metadata(page, need);
	atomic_long_inc(&fitted_allocs);
	atomic_long_inc(&live);
	atomic_long_add(need, &pages_kept);
	atomic_long_add((1UL << gb_order) - need, &pages_saved);
	while (need < (1UL << cur)) {
		unsigned long half = 1UL << --cur;

		if (need <= half) {
			__free_pages(page + base + half, cur);
		} else {
			base += half;
			need -= half;
		}
	}
	return (void *)gb_start_address;
}

/* Free&Fit of a recorded block, else the kernel's page-by-page free. */
static void seed_free_pages_exact(void *virt, size_t size)
{
	struct page *page = virt_to_page(virt);
	unsigned long need = get_nr_pages_metadata(page);
	unsigned long base = 0, addr, end;
	unsigned int cur;

	if (!is_pageman_loaded || !need) {
		addr = (unsigned long)virt;
		end = addr + PAGE_ALIGN(size);
		for (; addr < end; addr += PAGE_SIZE)
			free_page(addr);
		return;
	}
	free_and_fit_injector((unsigned long)virt);
	page = virt_to_page((void *)gb_start_address);
	atomic_long_inc(&fitted_frees);
	atomic_long_dec(&live);
	atomic_long_sub(need, &pages_kept);
	set_nr_pages_metadata(page, 0);
	cur = get_order(need << PAGE_SHIFT);
	for (;;) {
		unsigned long half;

		if (need == (1UL << cur)) {
			__free_pages(page + base, cur);
			return;
		}
		half = 1UL << --cur;
		if (need > half) {
			__free_pages(page + base, cur);
			base += half;
			need -= half;
		}
	}
}

struct seed_hook {
	const char *name;
	void *replacement;
	unsigned long addr;
	struct ftrace_ops ops;
};

static struct seed_hook hooks[] = {
	{ .name = "make_alloc_exact", .replacement = seed_make_alloc_exact },
	{ .name = "free_pages_exact", .replacement = seed_free_pages_exact },
};

static void notrace seed_redirect(unsigned long ip, unsigned long parent_ip,
				  struct ftrace_ops *ops,
				  struct ftrace_regs *fregs)
{
	struct seed_hook *h = container_of(ops, struct seed_hook, ops);

	ftrace_instruction_pointer_set(fregs, (unsigned long)h->replacement);
}

static int seed_hook_install(struct seed_hook *h)
{
	int ret;

	h->addr = kallsyms_lookup_name(h->name);
	if (!h->addr) {
		pr_err("%s not found\n", h->name);
		return -ENOENT;
	}
	h->ops.func = seed_redirect;
	h->ops.flags = FTRACE_OPS_FL_SAVE_REGS | FTRACE_OPS_FL_RECURSION |
		       FTRACE_OPS_FL_IPMODIFY;
	ret = ftrace_set_filter_ip(&h->ops, h->addr, 0, 0);
	if (ret)
		return ret;
	ret = register_ftrace_function(&h->ops);
	if (ret)
		ftrace_set_filter_ip(&h->ops, h->addr, 1, 0);
	return ret;
}

static void seed_hook_remove(struct seed_hook *h)
{
	unregister_ftrace_function(&h->ops);
	ftrace_set_filter_ip(&h->ops, h->addr, 1, 0);
}

static int seed_stats_show(struct seq_file *m, void *v)
{
	seq_printf(m, "fitted_allocs %ld\n", atomic_long_read(&fitted_allocs));
	seq_printf(m, "fitted_frees %ld\n", atomic_long_read(&fitted_frees));
	seq_printf(m, "live %ld\n", atomic_long_read(&live));
	seq_printf(m, "pages_kept %ld\n", atomic_long_read(&pages_kept));
	seq_printf(m, "pages_saved %ld\n", atomic_long_read(&pages_saved));
	return 0;
}

static int __init seed_init(void)
{
	int i, ret;

	if (!proc_create_single("pageman", 0444, NULL, seed_stats_show))
		return -ENOMEM;
	for (i = 0; i < ARRAY_SIZE(hooks); i++) {
		ret = seed_hook_install(&hooks[i]);
		if (ret) {
			while (--i >= 0)
				seed_hook_remove(&hooks[i]);
			remove_proc_entry("pageman", NULL);
			return ret;
		}
	}
	is_pageman_loaded = true;
	return 0;
}

static void __exit seed_exit(void)
{
	int i;

	is_pageman_loaded = false;
	for (i = 0; i < ARRAY_SIZE(hooks); i++)
		seed_hook_remove(&hooks[i]);
	remove_proc_entry("pageman", NULL);
}

module_init(seed_init);
module_exit(seed_exit);
MODULE_DESCRIPTION("Pageman as the seed describes it: known bad, for the harness only");
MODULE_LICENSE("GPL");
