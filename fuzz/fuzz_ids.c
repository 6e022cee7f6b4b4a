/* libFuzzer target: the id and UTF-8 validators (json__valid_id,
 * json__valid_cmid, json__valid_utf8), each checked against a plain
 * reference written from the contract and from Unicode's table of
 * well-formed byte sequences (The Unicode Standard, table 3-7). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool ref_id(const uint8_t *s, size_t n, bool colon)
{
	static const char ok[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.@-";
	if(n < 1 || n > 64) return false;
	for(size_t i = 0; i < n; i++){
		if(s[i] == 0 || !(strchr(ok, s[i]) || (colon && s[i] == ':'))) return false;
	}
	return true;
}

static bool in(uint8_t c, uint8_t lo, uint8_t hi) { return c >= lo && c <= hi; }

static bool ref_utf8(const uint8_t *s, size_t n)
{
	size_t i = 0;
	while(i < n){
		uint8_t c = s[i];
		size_t need;
		uint8_t lo = 0x80, hi = 0xBF;   /* the second byte's range */
		if(c == 0) return false;        /* the core refuses NUL too */
		if(c <= 0x7F){ i++; continue; }
		if(in(c, 0xC2, 0xDF)) need = 1;
		else if(c == 0xE0){ need = 2; lo = 0xA0; }
		else if(in(c, 0xE1, 0xEC) || in(c, 0xEE, 0xEF)) need = 2;
		else if(c == 0xED){ need = 2; hi = 0x9F; }
		else if(c == 0xF0){ need = 3; lo = 0x90; }
		else if(in(c, 0xF1, 0xF3)) need = 3;
		else if(c == 0xF4){ need = 3; hi = 0x8F; }
		else return false;
		if(n - i - 1 < need) return false;
		if(!in(s[i + 1], lo, hi)) return false;
		for(size_t k = 2; k <= need; k++){
			if(!in(s[i + k], 0x80, 0xBF)) return false;
		}
		i += need + 1;
	}
	return true;
}

static void differ(const char *what, const uint8_t *data, size_t size, bool core, bool ref)
{
	fprintf(stderr, "fuzz_ids: %s says %d, the reference %d, for %zu bytes:", what, core, ref, size);
	for(size_t i = 0; i < size && i < 80; i++) fprintf(stderr, " %02x", data[i]);
	fprintf(stderr, "\n");
	abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* a copy of exactly size bytes: the validators must not read past it */
	char *s = malloc(size ? size : 1);
	bool a, b;
	if(!s) return 0;
	memcpy(s, data, size);
	if((a = json__valid_id(s, size)) != (b = ref_id(data, size, false))) differ("json__valid_id", data, size, a, b);
	if((a = json__valid_cmid(s, size)) != (b = ref_id(data, size, true))) differ("json__valid_cmid", data, size, a, b);
	if((a = json__valid_utf8((const unsigned char *)s, size)) != (b = ref_utf8(data, size))){
		differ("json__valid_utf8", data, size, a, b);
	}
	free(s);
	return 0;
}
