/* Bounds the verifier can see.
 *
 * A `v &= mask` or `if (v > max)` in C may be dropped by clang as redundant,
 * or applied to a copy of v in another register than the one used for the
 * access: the verifier then rejects a memory access it cannot bound. These
 * are written in BPF assembly, which clang neither drops nor moves.
 */
#ifndef OBI_BOUNDS_H
#define OBI_BOUNDS_H

/* v = min(v, max) (Cilium's idiom). */
#define clamp_umax(v, max) asm volatile("if %0 <= %[m] goto +1; %0 = %[m]" : "+r"(v) : [m] "i"(max))

#endif /* OBI_BOUNDS_H */
