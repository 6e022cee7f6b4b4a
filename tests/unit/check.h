/* A minimal assertion kit for the unit tests: every failed check prints
 * where and what, and the test exits non-zero at the end. */
#ifndef CHECK_H
#define CHECK_H
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int check_failures;

#define CHECK(cond) do{ if(!(cond)){ \
	fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); check_failures++; } }while(0)
#define CHECK_EQ_INT(a, b) do{ long long _a = (long long)(a), _b = (long long)(b); if(_a != _b){ \
	fprintf(stderr, "%s:%d: %s == %lld, expected %lld\n", __FILE__, __LINE__, #a, _a, _b); check_failures++; } }while(0)
#define CHECK_EQ_STR(a, b) do{ const char *_a = (a), *_b = (b); if(!_a || !_b || strcmp(_a, _b)){ \
	fprintf(stderr, "%s:%d: %s == \"%s\", expected \"%s\"\n", __FILE__, __LINE__, #a, _a ? _a : "(null)", \
			_b ? _b : "(null)"); check_failures++; } }while(0)
#define CHECK_DONE() do{ if(check_failures){ fprintf(stderr, "%d check(s) failed\n", check_failures); return 1; } \
	printf("ok\n"); return 0; }while(0)

/* A fresh temporary directory for an LMDB environment. */
static inline char *tmp_db_dir(void)
{
	static char path[64];
	snprintf(path, sizeof(path), "/tmp/chat-unit-XXXXXX");
	return mkdtemp(path);
}

static inline void rm_db_dir(const char *dir)
{
	char p[128];
	snprintf(p, sizeof(p), "%s/data.mdb", dir); remove(p);
	snprintf(p, sizeof(p), "%s/lock.mdb", dir); remove(p);
	snprintf(p, sizeof(p), "%s/journal", dir); remove(p);
	remove(dir);
}
#endif
