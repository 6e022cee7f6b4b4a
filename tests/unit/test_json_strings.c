/* json.c's word-at-a-time string loops against byte-at-a-time references and
 * cJSON: the writer (json__str_len, json__put_str, json__put_plain), the flat
 * reader's decoding and its plain flag, the id syntax tables and
 * json__put_u64. Strings put every kind of special byte at every position
 * (so every offset within an eight-byte word), at the end, next to UTF-8
 * sequences that straddle word boundaries, for lengths 0..40. */
#include <inttypes.h>
#include "chat.h"
#include "check.h"

/* Bytes that stand for themselves in a cJSON-printed string. */
static bool plain_byte(unsigned char c)
{
	return c >= 0x20 && c != '"' && c != '\\';
}

/* ---------------------------------------------------------------------- */

/* json__str_len and json__put_str give exactly cJSON's printed string, and
 * json__put_plain does too whenever no byte needs escaping. */
static void check_writer(const char *s)
{
	cJSON *item = cJSON_CreateString(s);
	char *want = item ? cJSON_PrintUnformatted(item) : NULL;
	size_t n = json__str_len(s), slen = strlen(s);
	char *buf = malloc(n + 16), *end;
	bool plain = true;

	CHECK(want != NULL && buf != NULL);
	if(!want || !buf) goto out;
	memset(buf, '#', n + 16);
	end = json__put_str(buf, s);
	CHECK_EQ_INT(end - buf, n);
	CHECK_EQ_INT(strlen(want), n);
	CHECK(!memcmp(buf, want, n < strlen(want) ? n : strlen(want)));
	CHECK(buf[n] == '#');   /* nothing written past the reported length */
	for(size_t i = 0; i < slen; i++) plain = plain && plain_byte((unsigned char)s[i]);
	CHECK_EQ_INT(plain, n == slen + 2);
	if(plain){
		memset(buf, '#', n + 16);
		end = json__put_plain(buf, s, slen);
		CHECK_EQ_INT(end - buf, n);
		CHECK(!memcmp(buf, want, n));
		CHECK(buf[n] == '#');
	}
out:
	free(buf);
	cJSON_free(want);
	cJSON_Delete(item);
}

/* The decoded forms the tests place in strings: every byte class the
 * writer and the reader treat apart, UTF-8 of 2, 3 and 4 bytes included. */
static const char *const specials[] = {
	"\"", "\\", "/", "\b", "\f", "\n", "\r", "\t", "\x01", "\x1f", "\x7f", " ",
	"\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80",
};
#define NSPECIALS (sizeof(specials) / sizeof(specials[0]))

static void writer_cases(void)
{
	char s[128];
	unsigned seed = 777;

	/* every special at every position of 'a' runs of length 0..40 */
	for(size_t len = 0; len <= 40; len++){
		for(size_t k = 0; k < NSPECIALS; k++){
			for(size_t at = 0; at <= len; at++){
				size_t sl = strlen(specials[k]);
				memset(s, 'a', at);
				memcpy(s + at, specials[k], sl);
				memset(s + at + sl, 'a', len - at);
				s[len + sl] = '\0';
				check_writer(s);
			}
		}
		memset(s, 'a', len);
		s[len] = '\0';
		check_writer(s);
	}
	/* random mixes of specials and plain bytes */
	for(int n = 0; n < 20000; n++){
		size_t len = 0;
		seed = seed * 1103515245u + 12345u;
		for(int parts = (int)(seed >> 16) % 24; parts > 0; parts--){
			const char *p;
			seed = seed * 1103515245u + 12345u;
			p = (seed >> 20) % 3 ? "abcdefgh" + (seed >> 8) % 8 : specials[(seed >> 12) % NSPECIALS];
			if(len + strlen(p) >= sizeof(s)) break;
			memcpy(s + len, p, strlen(p));
			len += strlen(p);
		}
		s[len] = '\0';
		check_writer(s);
	}
	/* all non-NUL bytes, alone and in a long run */
	for(int c = 1; c < 256; c++){
		s[0] = (char)c;
		s[1] = '\0';
		check_writer(s);
		memset(s, c, 40);
		s[40] = '\0';
		check_writer(s);
	}
}

/* ---------------------------------------------------------------------- */

/* How a special is written in a JSON string literal: its escape when it
 * must be (or, for '/', may be) escaped, else itself. */
static const char *escaped(const char *sp, bool alt)
{
	switch(sp[0]){
		case '"': return "\\\"";
		case '\\': return "\\\\";
		case '/': return alt ? "\\/" : "/";
		case '\b': return "\\b";
		case '\f': return "\\f";
		case '\n': return "\\n";
		case '\r': return "\\r";
		case '\t': return "\\t";
		case '\x01': return "\\u0001";
		case '\x1f': return "\\u001f";
		default: return sp;
	}
}

/* {"body":"<lit>"} preceded by pad spaces (shifting the string's place in
 * its words): whether the flat reader takes it, and if so that it decodes to
 * want (wlen bytes) with the right plain flag. */
static void check_reader(const char *lit, size_t pad, const char *want, size_t wlen, bool accept)
{
	char payload[256], scratch[257];
	struct json_flat f[] = {{.name = "body", .string = true}};
	int len = snprintf(payload, sizeof(payload), "%*s{\"body\":\"%s\"}", (int)pad, "", lit);
	bool plain = true, ok;

	ok = json__flat_parse(payload, (size_t)len, f, 1, scratch);
	CHECK_EQ_INT(ok, accept);
	if(!ok || !accept) return;
	CHECK(f[0].present);
	CHECK_EQ_INT(f[0].len, wlen);
	CHECK(!memcmp(f[0].str, want, wlen) && f[0].str[wlen] == '\0');
	for(size_t i = 0; i < wlen; i++) plain = plain && plain_byte((unsigned char)want[i]);
	CHECK_EQ_INT(f[0].plain, plain);
	/* and a string that runs to the end of the payload is refused */
	CHECK(!json__flat_parse(payload, (size_t)len - 2, f, 1, scratch));
}

static void reader_cases(void)
{
	char lit[128], want[128];

	for(size_t len = 0; len <= 40; len++){
		for(size_t pad = 0; pad < 8; pad++){
			memset(lit, 'x', len);
			lit[len] = '\0';
			check_reader(lit, pad, lit, len, true);
			for(size_t k = 0; k < NSPECIALS; k++){
				/* '/' both plain and as \/ (which decodes to a plain byte) */
				for(int alt = 0; alt < 2; alt++){
					for(size_t at = 0; at <= len; at++){
						const char *e = escaped(specials[k], alt);
						size_t el = strlen(e), sl = strlen(specials[k]);
						bool accept = !strstr(e, "\\u");   /* \u: the general path */
						memset(lit, 'x', at);
						memcpy(lit + at, e, el);
						memset(lit + at + el, 'x', len - at);
						lit[len + el] = '\0';
						memset(want, 'x', at);
						memcpy(want + at, specials[k], sl);
						memset(want + at + sl, 'x', len - at);
						check_reader(lit, pad, want, len + sl, accept);
					}
				}
			}
			/* a raw control byte or \u0000 anywhere: not the flat reader's */
			for(size_t at = 0; at <= len; at++){
				memset(lit, 'x', len + 1);
				lit[at] = '\x01';
				lit[len + 1] = '\0';
				check_reader(lit, pad, NULL, 0, false);
				memset(lit, 'x', len);
				memcpy(lit + at, "\\u0000", 6);
				memset(lit + at + 6, 'x', len - at);
				lit[len + 6] = '\0';
				check_reader(lit, pad, NULL, 0, false);
			}
		}
	}
}

/* ---------------------------------------------------------------------- */

static bool ref_id_char(unsigned char c, bool colon)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
		|| c == '_' || c == '.' || c == '@' || c == '-' || (colon && c == ':');
}

static void id_cases(void)
{
	for(int c = 0; c < 256; c++){
		char s[3] = {'a', (char)c, 'b'};
		CHECK_EQ_INT(json__valid_id(s, 3), ref_id_char((unsigned char)c, false));
		CHECK_EQ_INT(json__valid_cmid(s, 3), ref_id_char((unsigned char)c, true));
		CHECK_EQ_INT(json__valid_id(s + 1, 1), ref_id_char((unsigned char)c, false));
	}
}

static void u64_cases(void)
{
	uint64_t vs[64];
	size_t nv = 0;
	vs[nv++] = 0;
	vs[nv++] = UINT64_MAX;
	vs[nv++] = 1763900000123ULL;
	for(uint64_t p = 1; nv + 3 <= sizeof(vs) / sizeof(vs[0]); p *= 10){
		vs[nv++] = p - 1;
		vs[nv++] = p;
		vs[nv++] = p + 1;
		if(p > UINT64_MAX / 10) break;
	}
	for(size_t i = 0; i < nv; i++){
		char want[32], got[JSON_U64_MAX + 8];
		char *end = json__put_u64(got, vs[i]);
		snprintf(want, sizeof(want), "%" PRIu64, vs[i]);
		*end = '\0';
		CHECK_EQ_STR(got, want);
	}
}

int main(void)
{
	writer_cases();
	reader_cases();
	id_cases();
	u64_cases();
	CHECK_DONE();
}
