/* Bit tricks the BPF instruction set has no instruction for. */
#ifndef OBI_BITS_H
#define OBI_BITS_H

/* The index of the lowest set bit of x (x must not be 0). */
static __always_inline __u32 ctz64(__u64 x)
{
	__u64 low = x & (~x + 1);
	__u32 k = 0;

	if (low > 0xffffffffULL) {
		k = 32;
		low >>= 32;
	}
	if (low > 0xffffULL) {
		k += 16;
		low >>= 16;
	}
	if (low > 0xffULL) {
		k += 8;
		low >>= 8;
	}
	if (low > 0xfULL) {
		k += 4;
		low >>= 4;
	}
	if (low > 0x3ULL) {
		k += 2;
		low >>= 2;
	}
	if (low > 0x1ULL)
		k += 1;
	return k;
}

#endif /* OBI_BITS_H */
