/*
 * hist.h — an HDR-style log-bucket histogram of nanosecond values.
 *
 * Each power of two is split into 128 linear sub-buckets, so a bucket is at
 * most 1/128 of its value wide; percentiles report the bucket's midpoint
 * (clamped to the exact min/max), an error below 0.4%. Values below 128 ns
 * are exact. Range: up to 2^43 ns (about 2.4 hours); larger values saturate
 * into the last bucket (the exact max is kept apart).
 */
#ifndef BENCH_HIST_H
#define BENCH_HIST_H

#include <stddef.h>
#include <stdint.h>

#define HIST_SUB_BITS 7
#define HIST_SUB (1u << HIST_SUB_BITS)
#define HIST_MAX_EXP 42
#define HIST_BUCKETS ((HIST_MAX_EXP - HIST_SUB_BITS + 2) * HIST_SUB)

struct hist {
	uint64_t count;
	uint64_t min, max;
	double sum;
	uint64_t b[HIST_BUCKETS];
};

void hist_init(struct hist *h);
void hist_add(struct hist *h, uint64_t v_ns);
void hist_merge(struct hist *into, const struct hist *from);
/* Value (ns) at quantile q in [0,1]; 0 when empty. */
uint64_t hist_quantile(const struct hist *h, double q);
/* {"n":…,"p50":…,"p90":…,"p99":…,"p999":…,"max":…,"mean":…} in µs (3 decimals). */
int hist_json(const struct hist *h, char *buf, size_t len);

#endif
