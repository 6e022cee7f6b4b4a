/*
 * journal.c — the write-ahead journal's file: records in, records out.
 * What a record means is store.c's business; see journal.h for the format's
 * rules and "Journal" in store.c for why it exists.
 *
 * Record: magic(4) len(4) lsn(8) boot(8) check(8), then len bytes of body,
 * then zeros to the next multiple of 8. All integers little-endian. check is
 * a 64-bit hash of the first 24 header bytes and the body: it tells a whole
 * record from a torn or stale one, it is not a defence against an attacker
 * (the file is the broker's own).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "journal.h"

#define MAGIC 0x314A4843u   /* "CHJ1" */

struct journal {
	int fd;
	bool dsync;
	unsigned char *map;     /* mapped mode */
	size_t size;
	size_t end;             /* bytes written in this round */
	uint64_t boot;
	char error[160];
};

static void le32_put(unsigned char *p, uint32_t v)
{
	for(int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static void le64_put(unsigned char *p, uint64_t v)
{
	for(int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static uint32_t le32_get(const unsigned char *p)
{
	uint32_t v = 0;
	for(int i = 3; i >= 0; i--) v = (v << 8) | p[i];
	return v;
}

static uint64_t le64_get(const unsigned char *p)
{
	uint64_t v = 0;
	for(int i = 7; i >= 0; i--) v = (v << 8) | p[i];
	return v;
}

/* A multiply-xor hash over 8-byte words: about a cycle per 8 bytes, where a
 * table CRC is a cycle per byte. */
static uint64_t mix(uint64_t h, uint64_t w)
{
	h ^= w;
	h *= 0x9E3779B97F4A7C15ull;
	return h ^ (h >> 29);
}

static uint64_t hash_bytes(uint64_t h, const unsigned char *p, size_t n)
{
	uint64_t w;
	while(n >= 8){
		memcpy(&w, p, 8);
		h = mix(h, w);
		p += 8;
		n -= 8;
	}
	if(n){
		w = 0;
		memcpy(&w, p, n);
		h = mix(h, w ^ ((uint64_t)n << 56));
	}
	return h;
}

static uint64_t record_check(const unsigned char *hdr, const unsigned char *body, size_t len)
{
	uint64_t h = hash_bytes(0x6A09E667F3BCC908ull, hdr, 24);
	return mix(hash_bytes(h, body, len), len);
}

static size_t pad8(size_t n)
{
	return (n + 7u) & ~(size_t)7u;
}

static int fill_zeros(int fd, size_t from, size_t to)
{
	static const unsigned char zeros[65536];
	while(from < to){
		size_t n = to - from < sizeof(zeros) ? to - from : sizeof(zeros);
		ssize_t w = pwrite(fd, zeros, n, (off_t)from);
		if(w < 0){
			if(errno == EINTR) continue;
			return -1;
		}
		from += (size_t)w;
	}
	return 0;
}

int journal__open(struct journal **out, const char *dir, size_t size, bool dsync, char *err, size_t errlen)
{
	struct journal *j;
	char path[4096];
	struct stat st;
	int dfd;

	*out = NULL;
	if(snprintf(path, sizeof(path), "%s/journal", dir) >= (int)sizeof(path)){
		snprintf(err, errlen, "journal path too long");
		return JOURNAL_ERR;
	}
	j = calloc(1, sizeof(*j));
	if(!j){
		snprintf(err, errlen, "out of memory");
		return JOURNAL_ERR;
	}
	j->dsync = dsync;
	j->fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | (dsync ? O_DSYNC : 0), 0640);
	if(j->fd < 0 || fstat(j->fd, &st) != 0) goto fail;
	if((size_t)st.st_size < size){
		/* real zeros, not a hole: later writes overwrite allocated blocks */
		if(fill_zeros(j->fd, (size_t)st.st_size, size) != 0 || fsync(j->fd) != 0) goto fail;
		if((dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) >= 0){
			(void)fsync(dfd);   /* the new file's name; best effort */
			close(dfd);
		}
		j->size = size;
	}else{
		j->size = (size_t)st.st_size & ~(size_t)4095u;   /* a larger file: an older, larger setting */
	}
	if(!dsync){
		j->map = mmap(NULL, j->size, PROT_READ | PROT_WRITE, MAP_SHARED, j->fd, 0);
		if(j->map == MAP_FAILED){
			j->map = NULL;
			goto fail;
		}
	}
	if(getrandom(&j->boot, sizeof(j->boot), GRND_NONBLOCK) != sizeof(j->boot)){
		j->boot = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32) ^ (uint64_t)(uintptr_t)j;
	}
	*out = j;
	return JOURNAL_OK;

fail:
	snprintf(err, errlen, "journal %s: %s", path, strerror(errno));
	journal__close(j);
	return JOURNAL_ERR;
}

void journal__close(struct journal *j)
{
	if(!j) return;
	if(j->map) munmap(j->map, j->size);
	if(j->fd >= 0) close(j->fd);
	free(j);
}

int journal__scan(struct journal *j, uint64_t first, bool round_only, journal_rec_cb cb, void *ud, uint64_t *last)
{
	size_t limit = round_only ? j->end : j->size, off = 0;
	unsigned char *buf = j->map;
	uint64_t expect = first, boot = 0;
	int rc = 0;

	*last = first - 1;
	if(!buf){
		size_t got = 0;
		buf = malloc(limit ? limit : 1);
		if(!buf) return ENOMEM;
		while(got < limit){
			ssize_t r = pread(j->fd, buf + got, limit - got, (off_t)got);
			if(r < 0 && errno == EINTR) continue;
			if(r <= 0) break;
			got += (size_t)r;
		}
		limit = got;
	}
	while(limit - off >= JOURNAL_HEADER){
		const unsigned char *h = buf + off;
		size_t len = le32_get(h + 4);
		if(le32_get(h) != MAGIC || len > limit - off - JOURNAL_HEADER) break;
		if(le64_get(h + 8) != expect) break;
		if(expect != first && le64_get(h + 16) != boot) break;
		if(le64_get(h + 24) != record_check(h, h + JOURNAL_HEADER, len)) break;
		boot = le64_get(h + 16);
		if((rc = cb(ud, expect, h + JOURNAL_HEADER, len)) != 0) break;
		*last = expect++;
		off += pad8(JOURNAL_HEADER + len);
		if(off > limit) break;
	}
	if(buf != j->map) free(buf);
	return rc;
}

int journal__append(struct journal *j, uint64_t lsn, unsigned char *body, size_t len)
{
	unsigned char *h = body - JOURNAL_HEADER;
	size_t total = JOURNAL_HEADER + len;

	if(len > UINT32_MAX || pad8(total) > j->size - j->end) return JOURNAL_FULL;
	le32_put(h, MAGIC);
	le32_put(h + 4, (uint32_t)len);
	le64_put(h + 8, lsn);
	le64_put(h + 16, j->boot);
	le64_put(h + 24, record_check(h, body, len));
	if(j->map){
		memcpy(j->map + j->end, h, total);
	}else{
		size_t done = 0;
		while(done < total){
			ssize_t w = pwrite(j->fd, h + done, total - done, (off_t)(j->end + done));
			if(w < 0 && errno == EINTR) continue;
			if(w <= 0){
				snprintf(j->error, sizeof(j->error), "journal write: %s", w < 0 ? strerror(errno) : "short write");
				return JOURNAL_ERR;
			}
			done += (size_t)w;
		}
	}
	j->end += pad8(total);
	return JOURNAL_OK;
}

void journal__reset(struct journal *j)
{
	j->end = 0;
}

size_t journal__used(const struct journal *j)
{
	return j->end;
}

size_t journal__size(const struct journal *j)
{
	return j->size;
}

const char *journal__error(const struct journal *j)
{
	return j->error;
}
