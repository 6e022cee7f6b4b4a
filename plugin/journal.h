/*
 * journal.h — the store's write-ahead journal (see "Journal" in store.c).
 *
 * A fixed-size file of records, written from offset 0 after every LMDB
 * commit ("a round"). A record is its header and an opaque body; it carries
 * a log sequence number (lsn, consecutive), the id of the process lifetime
 * that wrote it (boot) and a checksum over both and the body. What reads it
 * back accepts the chain lsn first, first + 1, … from offset 0 with one boot
 * and stops at the first record that breaks it: a torn record, a stale one
 * of an older round, one of another lifetime.
 *
 * Two ways to write, one per durability mode:
 *  - mapped (fsync off): the file is mapped shared and a record is copied
 *    into the mapping — no system call; the page cache holds it once the
 *    copy is done, so it survives a killed process, not a power loss.
 *  - dsync (fsync always): pwrite on a descriptor opened O_DSYNC — the record
 *    is on the disk when the call returns. The file is written with zeros
 *    when created so the records overwrite allocated blocks and each sync
 *    writes data only, no file system metadata.
 */
#ifndef CHAT_JOURNAL_H
#define CHAT_JOURNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define JOURNAL_HEADER 32u

struct journal;

enum journal_rc {
	JOURNAL_OK = 0,
	JOURNAL_FULL = 1,    /* journal__append: no room left in this round */
	JOURNAL_ERR = 2,     /* errno-style failure; see the err text */
};

/* Opens (creating and filling with zeros if needed) dir/journal of size
 * bytes (a multiple of 4096). */
int journal__open(struct journal **out, const char *dir, size_t size, bool dsync, char *err, size_t errlen);
void journal__close(struct journal *j);

/* Calls cb for each record of the chain that starts at offset 0 with lsn
 * first, in order, until the chain ends or cb returns non-zero (returned).
 * *last receives the lsn of the last record passed to cb (first - 1 if
 * none). round_only: stop at what this round wrote (a redo); otherwise read
 * the whole file (the start, before anything is written). Returns 0, cb's
 * non-zero return, or ENOMEM. */
typedef int (*journal_rec_cb)(void *ud, uint64_t lsn, const unsigned char *body, size_t len);
int journal__scan(struct journal *j, uint64_t first, bool round_only, journal_rec_cb cb, void *ud, uint64_t *last);

/* Appends one record; JOURNAL_FULL when it does not fit in what is left of
 * the round (nothing written). The body is header-less: the journal adds its
 * own header in front of it, so body must have JOURNAL_HEADER bytes of room
 * before it (body - JOURNAL_HEADER is written to). */
int journal__append(struct journal *j, uint64_t lsn, unsigned char *body, size_t len);

/* The round is over (everything in it is in LMDB): write from offset 0. */
void journal__reset(struct journal *j);

/* Bytes written in this round; the file's size. */
size_t journal__used(const struct journal *j);
size_t journal__size(const struct journal *j);

/* The last system error text (journal__append). */
const char *journal__error(const struct journal *j);

#endif
