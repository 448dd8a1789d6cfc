/* Bit tricks the BPF instruction set has no instruction for. */
#ifndef OBI_BITS_H
#define OBI_BITS_H

/* The index of the lowest set bit of x (x must not be 0): the count of the bits below it,
 * without a branch. With branches (a binary search) every call forks the verifier's paths
 * six times, and a loop over a word's bits made Debian 6.1's verifier give up at a million
 * instructions. */
static __always_inline __u32 ctz64(__u64 x)
{
	__u64 v = (x & (~x + 1)) - 1;

	v = v - ((v >> 1) & 0x5555555555555555ULL);
	v = (v & 0x3333333333333333ULL) + ((v >> 2) & 0x3333333333333333ULL);
	v = (v + (v >> 4)) & 0x0f0f0f0f0f0f0f0fULL;
	return (__u32)((v * 0x0101010101010101ULL) >> 56) & 63;
}

#endif /* OBI_BITS_H */
