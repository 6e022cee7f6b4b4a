/* hist.c — see hist.h. */
#include <stdio.h>
#include <string.h>

#include "hist.h"

static unsigned bucket_of(uint64_t v)
{
	unsigned e;
	if(v < HIST_SUB) return (unsigned)v;
	e = 63u - (unsigned)__builtin_clzll(v);
	if(e > HIST_MAX_EXP){
		e = HIST_MAX_EXP;
		v = (UINT64_C(1) << (HIST_MAX_EXP + 1)) - 1;
	}
	return (e - HIST_SUB_BITS + 1) * HIST_SUB + (unsigned)((v >> (e - HIST_SUB_BITS)) & (HIST_SUB - 1));
}

/* Lowest value and width of bucket i. */
static void bucket_range(unsigned i, uint64_t *lo, uint64_t *width)
{
	unsigned block = i / HIST_SUB, sub = i % HIST_SUB;
	if(block == 0){
		*lo = i;
		*width = 1;
		return;
	}
	*lo = (uint64_t)(HIST_SUB + sub) << (block - 1);
	*width = UINT64_C(1) << (block - 1);
}

void hist_init(struct hist *h)
{
	memset(h, 0, sizeof(*h));
	h->min = UINT64_MAX;
}

void hist_add(struct hist *h, uint64_t v)
{
	h->b[bucket_of(v)]++;
	h->count++;
	h->sum += (double)v;
	if(v < h->min) h->min = v;
	if(v > h->max) h->max = v;
}

void hist_merge(struct hist *into, const struct hist *from)
{
	for(unsigned i = 0; i < HIST_BUCKETS; i++) into->b[i] += from->b[i];
	into->count += from->count;
	into->sum += from->sum;
	if(from->min < into->min) into->min = from->min;
	if(from->max > into->max) into->max = from->max;
}

uint64_t hist_quantile(const struct hist *h, double q)
{
	uint64_t rank, seen = 0;
	if(h->count == 0) return 0;
	if(q >= 1.0) return h->max;
	rank = (uint64_t)(q * (double)h->count + 0.999999);
	if(rank < 1) rank = 1;
	for(unsigned i = 0; i < HIST_BUCKETS; i++){
		seen += h->b[i];
		if(seen >= rank){
			uint64_t lo, w, mid;
			bucket_range(i, &lo, &w);
			mid = lo + w / 2;
			if(mid > h->max) mid = h->max;
			if(mid < h->min) mid = h->min;
			return mid;
		}
	}
	return h->max;
}

int hist_json(const struct hist *h, char *buf, size_t len)
{
	if(h->count == 0) return snprintf(buf, len, "{\"n\":0}");
	return snprintf(buf, len,
			"{\"n\":%llu,\"p50\":%.3f,\"p90\":%.3f,\"p99\":%.3f,\"p999\":%.3f,\"max\":%.3f,\"mean\":%.3f}",
			(unsigned long long)h->count, hist_quantile(h, 0.50) / 1e3, hist_quantile(h, 0.90) / 1e3,
			hist_quantile(h, 0.99) / 1e3, hist_quantile(h, 0.999) / 1e3, h->max / 1e3,
			h->sum / (double)h->count / 1e3);
}
