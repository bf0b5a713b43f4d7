// SPDX-License-Identifier: GPL-2.0
/*
 * oops_on_load: a module under test that dereferences NULL in its init.
 * It exists so that the harness's own tests can show that a module which
 * oopses on load ends in a titled finding and a failing verdict.
 */
#include <linux/module.h>

static int *nowhere;

static int __init oops_on_load_init(void)
{
	int *p = READ_ONCE(nowhere);	/* NULL, unknown to the compiler */

	*p = 1;
	return 0;
}

module_init(oops_on_load_init);
MODULE_DESCRIPTION("Broken on purpose: oopses on load");
MODULE_LICENSE("GPL");
