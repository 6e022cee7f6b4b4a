/*
 * session.h — the shared driver of the fuzz targets that go through the
 * core's real entry points (chat__handle_publish, acl__check, chat__tick,
 * chat__disconnect) on a real LMDB.
 *
 * Every input starts from the same fresh state (a new LMDB environment in a
 * temporary directory, seeded through chat__handle_publish), so a crash found
 * after a sequence of publishes reproduces from its input file alone.
 *
 * Input: up to FUZZ_MAX_CHUNKS chunks separated by the byte 0xFF (never part
 * of valid UTF-8, so no payload worth sending loses anything). Each chunk is
 *   [ctl] [sel] payload…
 * ctl  bits 0-2  who publishes: alice, bob, carol, eve (member of nothing),
 *                bridge (push user), ops (observer), no username, alice's
 *                second device
 *      bit  3    MQTT 5 (else 3.1.1)
 *      bits 4-5  response topic: none, chat/u/{me}/r, chat/u/other/r, chat/u/{me}/#
 *      bits 6-7  afterwards: nothing, +1 s and a tick, the device disconnects,
 *                +120 s and a tick
 * sel  bits 0-3  the topic (see the target's table in session.c)
 *      bit  4    ignore the write ACL (by default a publish the ACL refuses
 *                never reaches the message hook, as in the broker)
 *      bit  5    then restart: close the core, open it again on the same
 *                LMDB, republish the stored presence (as at broker start)
 * A chunk shorter than two bytes is skipped.
 *
 * The seeded state (conversation ids are deterministic, see getrandom() in
 * session.c):
 *   g_000000000000  group "team": alice (admin), bob, carol; a few messages
 *   d_111111111111  direct alice-bob; a few messages
 *   g_222222222222  group "other": carol (admin), bob; alice is no member
 *   bob has a push device and is offline, so messages to him make push jobs
 *   (job 1 is published and waits for its ack, job 2 collects messages).
 */
#ifndef FUZZ_SESSION_H
#define FUZZ_SESSION_H

#include <stddef.h>
#include <stdint.h>

#define FUZZ_MAX_CHUNKS 8
#define FUZZ_SEP 0xFF

enum fuzz_topics {
	FUZZ_T_SEND,      /* chat/send/{conv from the conversation table} */
	FUZZ_T_TYPING,    /* chat/typing/{conv} */
	FUZZ_T_RECEIPT,   /* chat/receipt/{conv} */
	FUZZ_T_REQ,       /* chat/req */
	FUZZ_T_PRESENCE,  /* chat/p/{user from the user table} */
	FUZZ_T_PUSH_ACK,  /* chat/push/ack */
	FUZZ_T_ANY,       /* sel picks any of the above or another chat topic; 15: the
	                     topic is the payload up to its first '\n' */
	FUZZ_T_ACL,       /* acl__check only: ctl bits 3-4 pick the access, the
	                     payload is the topic (up to '\n') then a write payload */
};

/* Runs one fuzz input against a fresh chat core. Always returns 0. */
int fuzz_session_run(const uint8_t *data, size_t size, enum fuzz_topics topics);

#endif
