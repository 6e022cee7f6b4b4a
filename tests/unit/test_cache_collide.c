/* test_cache.c with the store compiled in and every cache key hashed to one
 * of four values: the cache must compare keys, not trust hashes, and stay
 * right when probes run out and entries evict each other. */
#define STORE_CACHE_TEST_HASH_MASK 3u
#include "store.c"
#include "journal.c"
#include "test_cache.c"
