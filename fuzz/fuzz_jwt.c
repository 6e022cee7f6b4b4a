/* libFuzzer target: the JWT verifier (jwt__verify), the password of every
 * login under plugin_opt_auth jwt. The first byte picks the mode:
 *   even  the rest is the token, verbatim (segments, base64url, sizes, alg);
 *   odd   the rest is header JSON '\n' claims JSON, which the target encodes
 *         and signs with the configured HS256 secret (bit 1 set: then breaks
 *         the signature), so the header and claim checks see signed tokens.
 * Oracle: JWT_OK only for a token the target signed itself; anything else
 * accepted is a forgery and aborts. Keys: the HS256 secret and an EC P-256
 * public key (ES256 paths; no input can sign for it). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>

#include "jwt.h"
#include "../tests/unit/b64url.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define NOW 1700000000LL
static const char SECRET[] = "0123456789abcdef0123456789abcdef-fuzz-secret";

static struct jwt_keys *keys;
static struct jwt_config cfg;

static void fail(const char *what)
{
	fprintf(stderr, "fuzz_jwt: %s\n", what);
	abort();
}

static char *ec_public_pem(void)
{
	EVP_PKEY *k = EVP_EC_gen("P-256");
	BIO *b = BIO_new(BIO_s_mem());
	char *pem, *out;
	long n;
	if(!k || !b || !PEM_write_bio_PUBKEY(b, k)) fail("EC key");
	n = BIO_get_mem_data(b, &pem);
	out = strndup(pem, (size_t)n);
	BIO_free(b);
	EVP_PKEY_free(k);
	return out;
}

static void setup(void)
{
	char err[256], *pem = ec_public_pem();
	jwt__config_defaults(&cfg);
	if(jwt__config_set(&cfg, "auth", "jwt", err, sizeof(err)) || jwt__config_set(&cfg, "jwt_issuer", "https://id.example", err, sizeof(err))
			|| jwt__config_set(&cfg, "jwt_audience", "chat", err, sizeof(err))
			|| jwt__config_set(&cfg, "jwt_leeway_s", "30", err, sizeof(err))){
		fail(err);
	}
	if(jwt__keys_from_memory(SECRET, strlen(SECRET), pem, strlen(pem), &keys, err, sizeof(err))) fail(err);
	free(pem);
}

/* header '\n' claims -> "b64(header).b64(claims).b64(HS256)"; malloc'ed. */
static char *signed_token(const uint8_t *p, size_t len, bool break_sig, size_t *out_len)
{
	const uint8_t *nl = memchr(p, '\n', len);
	size_t hl = nl ? (size_t)(nl - p) : len, cl = nl ? len - hl - 1 : 0;
	char *tok = malloc(2 * len + 64);
	unsigned char sig[EVP_MAX_MD_SIZE];
	unsigned int sl = 0;
	size_t n;

	if(!tok) fail("out of memory");
	n = b64url(p, hl, tok);
	tok[n++] = '.';
	n += b64url(nl ? nl + 1 : p + len, cl, tok + n);
	if(!HMAC(EVP_sha256(), SECRET, (int)strlen(SECRET), (const unsigned char *)tok, n, sig, &sl)) fail("HMAC");
	if(break_sig) sig[0] ^= 1;
	tok[n++] = '.';
	n += b64url(sig, sl, tok + n);
	*out_len = n;
	return tok;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char why[256];
	char *tok;
	size_t len;
	bool ours;
	enum jwt_result r;

	if(!keys) setup();
	if(size < 1) return 0;
	if(data[0] & 1){
		ours = !(data[0] & 2);
		tok = signed_token(data + 1, size - 1, !ours, &len);
	}else{
		ours = false;
		len = size - 1;
		tok = malloc(len ? len : 1);   /* exactly len bytes: no NUL to lean on */
		if(!tok) fail("out of memory");
		memcpy(tok, data + 1, len);
	}
	memset(why, 0x55, sizeof(why));
	r = jwt__verify(keys, &cfg, tok, len, "alice", NOW, why, sizeof(why));
	if(getenv("FUZZ_TRACE")) fprintf(stderr, "%.*s -> %s (%s)\n", (int)len, tok, jwt__result_name(r), r ? why : "");
	if(r == JWT_OK && !ours) fail("accepted a token nobody signed");
	if(r != JWT_OK && !memchr(why, '\0', sizeof(why))) fail("'why' is not a string");
	if(!jwt__result_name(r)) fail("no name for a result");
	free(tok);
	return 0;
}
