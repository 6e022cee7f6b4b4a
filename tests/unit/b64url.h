/* b64url.h — base64url without padding, for tests that build JWTs by hand
 * (tests/unit/test_jwt.c, fuzz/fuzz_jwt.c). The plugin only decodes. */
#ifndef CHAT_TEST_B64URL_H
#define CHAT_TEST_B64URL_H

#include <stddef.h>
#include <stdint.h>

/* Encodes len bytes of in into out (room for 4*ceil(len/3)+1 bytes), NUL-
 * terminated; returns the encoded length. */
static inline size_t b64url(const unsigned char *in, size_t len, char *out)
{
	static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
	size_t o = 0, i;
	for(i = 0; i + 2 < len; i += 3){
		uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
		out[o++] = tab[v >> 18]; out[o++] = tab[(v >> 12) & 63]; out[o++] = tab[(v >> 6) & 63]; out[o++] = tab[v & 63];
	}
	if(len - i == 1){
		out[o++] = tab[in[i] >> 2]; out[o++] = tab[(in[i] & 3) << 4];
	}else if(len - i == 2){
		uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
		out[o++] = tab[v >> 18]; out[o++] = tab[(v >> 12) & 63]; out[o++] = tab[(v >> 6) & 63];
	}
	out[o] = '\0';
	return o;
}

#endif
