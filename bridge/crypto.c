/*
 * crypto.c — what the providers' authentication needs from OpenSSL 3:
 * base64url, JWTs signed RS256 (FCM's OAuth grant) or ES256 (APNs provider
 * tokens), HMAC-SHA256 (webhook signatures), and the jitter of retries.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include <openssl/bio.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include "bridge.h"

char *crypto__b64url(const unsigned char *in, size_t len)
{
	static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
	char *out, *o;
	size_t i;

	out = malloc(len / 3 * 4 + 5);
	if(!out) return NULL;
	o = out;
	for(i = 0; i + 2 < len; i += 3){
		uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
		*o++ = alphabet[v >> 18 & 63];
		*o++ = alphabet[v >> 12 & 63];
		*o++ = alphabet[v >> 6 & 63];
		*o++ = alphabet[v & 63];
	}
	if(len - i == 1){
		uint32_t v = (uint32_t)in[i] << 16;
		*o++ = alphabet[v >> 18 & 63];
		*o++ = alphabet[v >> 12 & 63];
	}else if(len - i == 2){
		uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
		*o++ = alphabet[v >> 18 & 63];
		*o++ = alphabet[v >> 12 & 63];
		*o++ = alphabet[v >> 6 & 63];
	}
	*o = '\0';
	return out;
}

static void openssl_error(char *err, size_t errlen, const char *what)
{
	char buf[256];
	unsigned long e = ERR_get_error();

	if(e){
		ERR_error_string_n(e, buf, sizeof(buf));
		snprintf(err, errlen, "%s: %s", what, buf);
	}else{
		snprintf(err, errlen, "%s", what);
	}
	ERR_clear_error();
}

/* Never prompt for a passphrase: keys must be unencrypted. */
static int no_passphrase_cb(char *buf, int size, int rwflag, void *u)
{
	(void)buf; (void)size; (void)rwflag; (void)u;
	return -1;
}

EVP_PKEY *crypto__load_key(const char *pem, size_t len, char *err, size_t errlen)
{
	EVP_PKEY *key;
	BIO *bio;

	if(len > INT32_MAX){
		snprintf(err, errlen, "key too large");
		return NULL;
	}
	bio = BIO_new_mem_buf(pem, (int)len);
	if(!bio){
		openssl_error(err, errlen, "BIO_new_mem_buf");
		return NULL;
	}
	key = PEM_read_bio_PrivateKey(bio, NULL, no_passphrase_cb, NULL);
	BIO_free(bio);
	if(!key) openssl_error(err, errlen, "not an unencrypted PEM private key");
	return key;
}

int crypto__check_key(EVP_PKEY *key, enum jwt_alg alg, char *err, size_t errlen)
{
	char group[64];
	size_t glen = 0;

	if(alg == JWT_RS256){
		if(EVP_PKEY_get_base_id(key) != EVP_PKEY_RSA || EVP_PKEY_get_bits(key) < 2048){
			snprintf(err, errlen, "RS256 needs an RSA key of at least 2048 bits");
			return -1;
		}
		return 0;
	}
	if(EVP_PKEY_get_base_id(key) != EVP_PKEY_EC
			|| !EVP_PKEY_get_utf8_string_param(key, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof(group), &glen)
			|| strcmp(group, "prime256v1")){
		ERR_clear_error();
		snprintf(err, errlen, "ES256 needs an EC key on P-256 (prime256v1)");
		return -1;
	}
	return 0;
}

/* Signs data with SHA-256; ES256 turns the DER ECDSA signature into the JWS
 * form (RFC 7518 §3.4): r and s, 32 bytes each, big-endian. Returns a
 * malloc'd signature in *sig, or -1. */
static int sign(EVP_PKEY *key, enum jwt_alg alg, const char *data, size_t len, unsigned char **sig, size_t *siglen)
{
	EVP_MD_CTX *ctx;
	unsigned char *der = NULL;
	size_t derlen = 0;
	int rc = -1;

	*sig = NULL;
	ctx = EVP_MD_CTX_new();
	if(!ctx) return -1;
	if(EVP_DigestSignInit(ctx, NULL, EVP_sha256(), NULL, key) != 1) goto out;
	if(EVP_DigestSign(ctx, NULL, &derlen, (const unsigned char *)data, len) != 1) goto out;
	der = malloc(derlen);
	if(!der) goto out;
	if(EVP_DigestSign(ctx, der, &derlen, (const unsigned char *)data, len) != 1) goto out;

	if(alg == JWT_RS256){
		*sig = der;
		*siglen = derlen;
		der = NULL;
		rc = 0;
	}else{
		const unsigned char *p = der;
		const BIGNUM *r, *s;
		ECDSA_SIG *es = d2i_ECDSA_SIG(NULL, &p, (long)derlen);
		if(!es) goto out;
		ECDSA_SIG_get0(es, &r, &s);
		*sig = malloc(64);
		if(*sig && BN_bn2binpad(r, *sig, 32) == 32 && BN_bn2binpad(s, *sig + 32, 32) == 32){
			*siglen = 64;
			rc = 0;
		}else{
			free(*sig);
			*sig = NULL;
		}
		ECDSA_SIG_free(es);
	}
out:
	if(rc) ERR_clear_error();
	free(der);
	EVP_MD_CTX_free(ctx);
	return rc;
}

static char *b64url_json(const cJSON *item)
{
	char *text, *out;

	text = cJSON_PrintUnformatted(item);
	if(!text) return NULL;
	out = crypto__b64url((const unsigned char *)text, strlen(text));
	cJSON_free(text);
	return out;
}

char *crypto__jwt(EVP_PKEY *key, enum jwt_alg alg, const cJSON *header, const cJSON *claims)
{
	char *h = NULL, *c = NULL, *s = NULL, *jwt = NULL;
	unsigned char *sig = NULL;
	size_t siglen = 0, len;

	h = b64url_json(header);
	c = b64url_json(claims);
	if(!h || !c) goto out;
	len = strlen(h) + 1 + strlen(c);
	jwt = malloc(len + 1);
	if(!jwt) goto out;
	snprintf(jwt, len + 1, "%s.%s", h, c);
	if(sign(key, alg, jwt, len, &sig, &siglen)) goto fail;
	s = crypto__b64url(sig, siglen);
	if(!s) goto fail;
	{
		char *full = malloc(len + 1 + strlen(s) + 1);
		if(!full) goto fail;
		sprintf(full, "%s.%s", jwt, s);
		free(jwt);
		jwt = full;
	}
	goto out;
fail:
	free(jwt);
	jwt = NULL;
out:
	free(h);
	free(c);
	free(s);
	free(sig);
	return jwt;
}

int crypto__hmac_sha256_hex(const char *key, size_t keylen, const char *a, size_t alen, const char *b,
		size_t blen, const char *c, size_t clen, char out[65])
{
	EVP_MAC *mac;
	EVP_MAC_CTX *ctx = NULL;
	OSSL_PARAM params[2];
	unsigned char md[32];
	size_t mdlen = 0;
	int rc = -1;

	mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
	if(!mac) goto out;
	ctx = EVP_MAC_CTX_new(mac);
	if(!ctx) goto out;
	params[0] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0);
	params[1] = OSSL_PARAM_construct_end();
	if(EVP_MAC_init(ctx, (const unsigned char *)key, keylen, params) != 1) goto out;
	if(EVP_MAC_update(ctx, (const unsigned char *)a, alen) != 1) goto out;
	if(EVP_MAC_update(ctx, (const unsigned char *)b, blen) != 1) goto out;
	if(EVP_MAC_update(ctx, (const unsigned char *)c, clen) != 1) goto out;
	if(EVP_MAC_final(ctx, md, &mdlen, sizeof(md)) != 1 || mdlen != 32) goto out;
	for(size_t i = 0; i < 32; i++){
		sprintf(out + 2 * i, "%02x", md[i]);
	}
	rc = 0;
out:
	if(rc) ERR_clear_error();
	EVP_MAC_CTX_free(ctx);
	EVP_MAC_free(mac);
	return rc;
}

uint64_t crypto__seed(void)
{
	uint64_t seed = 0;

	if(getrandom(&seed, sizeof(seed), 0) != (ssize_t)sizeof(seed) || !seed){
		seed = (uint64_t)clock__wall_ms() * 0x9E3779B97F4A7C15ULL | 1;
	}
	return seed;
}

int64_t crypto__jitter(uint64_t *state, int64_t bound)
{
	uint64_t x = *state;

	if(bound <= 0) return 0;
	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	*state = x;
	return (int64_t)((x * 0x2545F4914F6CDD1DULL >> 11) % ((uint64_t)bound + 1));
}
