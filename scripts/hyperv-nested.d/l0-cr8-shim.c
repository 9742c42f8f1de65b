/*
 * LD_PRELOAD shim for L0 (QEMU TCG) when L2 boots UEFI firmware (scripts/hyperv-nested --uefi).
 *
 * The bug it steps around: when a nested guest (L2, under L1's KVM) writes CR8 while L1's KVM has
 * an interrupt window open (V_IRQ set in the VMCB and CR8 writes not intercepted), QEMU's TCG
 * helper for MOV to CR8 (target/i386/tcg/sysemu/misc_helper.c, helper_write_crN, case 8) calls
 * cpu_interrupt() without holding the big QEMU lock, and tcg_handle_interrupt()
 * (accel/tcg/tcg-accel-ops.c) aborts on g_assert(qemu_mutex_iothread_locked()) (QEMU 10:
 * bql_locked()). EDK2 firmware (OVMF) restores CR8 at the end of every interrupt, so L0 aborts
 * within seconds of OVMF starting in L2; the canary itself never writes CR8.
 *
 * The shim lets exactly that assertion return; every other glib assertion aborts as before.
 * After it, tcg_handle_interrupt sets the request bit on its own vCPU and kicks it, which is
 * what it would do holding the lock (L0 runs one vCPU). Checked against the disassembly of
 * Debian's QEMU 7.2 accel-tcg-x86_64.so: the instruction after the call is the normal path.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>

typedef void (*assertion_fn)(const char *, const char *, int, const char *, const char *);

void g_assertion_message_expr(const char *domain, const char *file, int line, const char *func,
                              const char *expr)
{
    if (func && expr && strcmp(func, "tcg_handle_interrupt") == 0 &&
        (strcmp(expr, "qemu_mutex_iothread_locked()") == 0 || strcmp(expr, "bql_locked()") == 0))
        return;
    assertion_fn real = (assertion_fn)dlsym(RTLD_NEXT, "g_assertion_message_expr");
    if (real)
        real(domain, file, line, func, expr);
    abort();
}
