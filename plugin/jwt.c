/*
 * jwt.c — JWT logins: options, key files, and the verifier.
 *
 * A login's password is a compact JWS (header.payload.signature, each
 * base64url without padding) signed with HS256, RS256 or ES256. The algorithm
 * a token names must be one a configured key allows: HS256 only with the
 * shared secret, RS256 only with RSA public keys, ES256 only with P-256 keys,
 * so a public key can never be used as an HMAC secret (algorithm confusion)
 * and "none" is never accepted. The signature is checked before any claim, so
 * a forged token learns nothing about the claims it would need.
 */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "chat.h"
#include "jwt.h"

enum key_kind { KEY_RSA, KEY_EC };

struct jwt_keys {
	unsigned char *secret;
	size_t secret_len;
	EVP_PKEY *pkeys[JWT_KEYS_MAX];
	enum key_kind kinds[JWT_KEYS_MAX];
	size_t count;
};

/* ====================================================================== *
 * Options
 * ====================================================================== */

void jwt__config_defaults(struct jwt_config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->mode = CHAT_AUTH_NONE;
	cfg->leeway_s = 30;
}

void jwt__config_free(struct jwt_config *cfg)
{
	free(cfg->hs256_secret_file);
	free(cfg->public_key_file);
	free(cfg->issuer);
	free(cfg->audience);
	for(size_t i = 0; i < cfg->defer_user_count; i++){
		free(cfg->defer_users[i]);
	}
	free(cfg->defer_users);
	cfg->hs256_secret_file = cfg->public_key_file = cfg->issuer = cfg->audience = NULL;
	cfg->defer_users = NULL;
	cfg->defer_user_count = 0;
}

static int set_string(char **field, const char *key, const char *value, char *err, size_t errlen)
{
	if(!*value){
		snprintf(err, errlen, "plugin_opt_%s: empty value", key);
		return -1;
	}
	free(*field);
	*field = strdup(value);
	if(!*field){
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	return 0;
}

int jwt__config_set(struct jwt_config *cfg, const char *key, const char *value, char *err, size_t errlen)
{
	if(!strcasecmp(key, "auth")){
		if(!strcasecmp(value, "none")){
			cfg->mode = CHAT_AUTH_NONE;
		}else if(!strcasecmp(value, "jwt")){
			cfg->mode = CHAT_AUTH_JWT;
		}else{
			snprintf(err, errlen, "plugin_opt_auth: '%s' is neither 'none' (mosquitto's password_file or "
					"another plugin decides logins) nor 'jwt' (the password is a signed JWT)", value);
			return -1;
		}
		return 0;
	}
	cfg->set_without_mode = true;
	if(!strcasecmp(key, "jwt_hs256_secret_file")){
		return set_string(&cfg->hs256_secret_file, key, value, err, errlen);
	}else if(!strcasecmp(key, "jwt_public_key_file")){
		return set_string(&cfg->public_key_file, key, value, err, errlen);
	}else if(!strcasecmp(key, "jwt_issuer")){
		return set_string(&cfg->issuer, key, value, err, errlen);
	}else if(!strcasecmp(key, "jwt_audience")){
		return set_string(&cfg->audience, key, value, err, errlen);
	}else if(!strcasecmp(key, "jwt_leeway_s")){
		char *end;
		unsigned long v;
		errno = 0;
		v = strtoul(value, &end, 10);
		if(*value < '0' || *value > '9' || *end || errno || v > 3600){
			snprintf(err, errlen, "plugin_opt_jwt_leeway_s: '%s' is not a whole number of seconds in 0..3600", value);
			return -1;
		}
		cfg->leeway_s = (unsigned)v;
		return 0;
	}
	snprintf(err, errlen, "unknown option plugin_opt_%s", key);
	return -1;
}

int jwt__config_check(const struct jwt_config *cfg, char *err, size_t errlen)
{
	if(cfg->mode != CHAT_AUTH_JWT && (cfg->set_without_mode || cfg->defer_user_count)){
		snprintf(err, errlen, "plugin_opt_jwt_* options are set but plugin_opt_auth is not 'jwt'");
		return -1;
	}
	if(cfg->mode == CHAT_AUTH_JWT && !cfg->hs256_secret_file && !cfg->public_key_file){
		snprintf(err, errlen, "plugin_opt_auth jwt needs plugin_opt_jwt_hs256_secret_file "
				"or plugin_opt_jwt_public_key_file");
		return -1;
	}
	return 0;
}

bool jwt__is_deferred(const struct jwt_config *cfg, const char *user)
{
	if(!user) return false;
	for(size_t i = 0; i < cfg->defer_user_count; i++){
		if(!strcmp(cfg->defer_users[i], user)) return true;
	}
	return false;
}

/* ====================================================================== *
 * Keys
 * ====================================================================== */

void jwt__keys_free(struct jwt_keys *keys)
{
	if(!keys) return;
	if(keys->secret){
		OPENSSL_cleanse(keys->secret, keys->secret_len);
		free(keys->secret);
	}
	for(size_t i = 0; i < keys->count; i++){
		EVP_PKEY_free(keys->pkeys[i]);
	}
	free(keys);
}

/* Reads a whole file of at most max bytes into a malloc'd, NUL-terminated
 * buffer. Returns NULL with a sentence in err. */
static char *read_file(const char *path, size_t max, size_t *len, const char *opt, char *err, size_t errlen)
{
	FILE *f = fopen(path, "rb");
	char *buf;
	size_t n;

	if(!f){
		snprintf(err, errlen, "plugin_opt_%s: cannot open '%s': %s", opt, path, strerror(errno));
		return NULL;
	}
	buf = malloc(max + 2);
	if(!buf){
		fclose(f);
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	n = fread(buf, 1, max + 1, f);
	if(ferror(f) || n > max){
		snprintf(err, errlen, "plugin_opt_%s: '%s' %s", opt, path,
				ferror(f) ? "could not be read" : "is too large");
		fclose(f);
		free(buf);
		return NULL;
	}
	fclose(f);
	buf[n] = '\0';
	*len = n;
	return buf;
}

static int add_secret(struct jwt_keys *keys, const void *secret, size_t len, char *err, size_t errlen)
{
	const unsigned char *s = secret;

	/* a secret file written by `echo` or an editor ends in a newline that is
	 * not part of the secret */
	if(len && s[len - 1] == '\n') len--;
	if(len && s[len - 1] == '\r') len--;
	if(len < JWT_SECRET_MIN || len > JWT_SECRET_MAX){
		snprintf(err, errlen, "plugin_opt_jwt_hs256_secret_file: the secret is %zu bytes; HS256 needs %d..%d",
				len, JWT_SECRET_MIN, JWT_SECRET_MAX);
		return -1;
	}
	keys->secret = malloc(len);
	if(!keys->secret){
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	memcpy(keys->secret, s, len);
	keys->secret_len = len;
	return 0;
}

/* Checks one public key: RSA of at least 2048 bits or EC on P-256. */
static int add_pkey(struct jwt_keys *keys, EVP_PKEY *pk, char *err, size_t errlen)
{
	char group[64];
	size_t glen = 0;

	if(keys->count == JWT_KEYS_MAX){
		snprintf(err, errlen, "plugin_opt_jwt_public_key_file: more than %d keys", JWT_KEYS_MAX);
		return -1;
	}
	if(EVP_PKEY_get_id(pk) == EVP_PKEY_RSA){
		if(EVP_PKEY_get_bits(pk) < 2048){
			snprintf(err, errlen, "plugin_opt_jwt_public_key_file: key %zu is RSA with %d bits; RS256 needs 2048 "
					"or more", keys->count + 1, EVP_PKEY_get_bits(pk));
			return -1;
		}
		keys->kinds[keys->count] = KEY_RSA;
	}else if(EVP_PKEY_get_id(pk) == EVP_PKEY_EC){
		if(!EVP_PKEY_get_group_name(pk, group, sizeof(group), &glen) || strcmp(group, "prime256v1")){
			snprintf(err, errlen, "plugin_opt_jwt_public_key_file: key %zu is EC on %s; ES256 needs P-256",
					keys->count + 1, glen ? group : "an unknown curve");
			return -1;
		}
		keys->kinds[keys->count] = KEY_EC;
	}else{
		snprintf(err, errlen, "plugin_opt_jwt_public_key_file: key %zu is neither RSA nor EC", keys->count + 1);
		return -1;
	}
	keys->pkeys[keys->count++] = pk;
	return 0;
}

/* Every PEM block of pem, each a "PUBLIC KEY" (SubjectPublicKeyInfo); at
 * least one. Blocks are read generically so that anything else in the file
 * (a private key, a certificate, a damaged block) is an error, not skipped. */
static int add_pem(struct jwt_keys *keys, const char *pem, size_t len, char *err, size_t errlen)
{
	BIO *bio = BIO_new_mem_buf(pem, (int)len);
	char *name = NULL, *header = NULL;
	unsigned char *data = NULL;
	long dlen = 0;
	int rc = 0;

	if(!bio){
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	ERR_clear_error();
	while(!rc && PEM_read_bio(bio, &name, &header, &data, &dlen) == 1){
		const unsigned char *p = data;
		EVP_PKEY *pk = NULL;
		if(strcmp(name, "PUBLIC KEY")){
			snprintf(err, errlen, "plugin_opt_jwt_public_key_file: block %zu is \"%.40s\", not \"PUBLIC KEY\"",
					keys->count + 1, name);
			rc = -1;
		}else if(!(pk = d2i_PUBKEY(NULL, &p, dlen)) || p != data + dlen){
			snprintf(err, errlen, "plugin_opt_jwt_public_key_file: key %zu cannot be parsed", keys->count + 1);
			rc = -1;
		}else if(add_pkey(keys, pk, err, errlen)){
			rc = -1;
		}else{
			pk = NULL;
		}
		EVP_PKEY_free(pk);
		OPENSSL_free(name);
		OPENSSL_free(header);
		OPENSSL_free(data);
		name = header = NULL;
		data = NULL;
	}
	if(!rc){
		/* the loop ends at the end of the text (no further start line) or at
		 * a block it could not read */
		unsigned long e = ERR_peek_last_error();
		if(e && !(ERR_GET_LIB(e) == ERR_LIB_PEM && ERR_GET_REASON(e) == PEM_R_NO_START_LINE)){
			snprintf(err, errlen, "plugin_opt_jwt_public_key_file: block %zu is not valid PEM", keys->count + 1);
			rc = -1;
		}else if(keys->count == 0){
			snprintf(err, errlen, "plugin_opt_jwt_public_key_file: no PEM \"PUBLIC KEY\" block found");
			rc = -1;
		}
	}
	ERR_clear_error();
	BIO_free(bio);
	return rc;
}

int jwt__keys_from_memory(const void *secret, size_t secret_len, const char *pem, size_t pem_len,
		struct jwt_keys **out, char *err, size_t errlen)
{
	struct jwt_keys *keys;

	*out = NULL;
	if(!secret && !pem){
		snprintf(err, errlen, "no key given");
		return -1;
	}
	if(pem_len > JWT_PEM_MAX){
		snprintf(err, errlen, "plugin_opt_jwt_public_key_file: larger than %d bytes", JWT_PEM_MAX);
		return -1;
	}
	keys = calloc(1, sizeof(*keys));
	if(!keys){
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	if((secret && add_secret(keys, secret, secret_len, err, errlen))
			|| (pem && add_pem(keys, pem, pem_len, err, errlen))){
		jwt__keys_free(keys);
		return -1;
	}
	*out = keys;
	return 0;
}

int jwt__keys_load(const struct jwt_config *cfg, struct jwt_keys **out, char *err, size_t errlen)
{
	char *secret = NULL, *pem = NULL;
	size_t slen = 0, plen = 0;
	int rc = -1;

	*out = NULL;
	if(cfg->hs256_secret_file && !(secret = read_file(cfg->hs256_secret_file, JWT_SECRET_MAX + 2, &slen,
				"jwt_hs256_secret_file", err, errlen))){
		goto done;
	}
	if(cfg->public_key_file && !(pem = read_file(cfg->public_key_file, JWT_PEM_MAX, &plen,
				"jwt_public_key_file", err, errlen))){
		goto done;
	}
	rc = jwt__keys_from_memory(secret, slen, pem, plen, out, err, errlen);
done:
	if(secret){
		OPENSSL_cleanse(secret, slen);
		free(secret);
	}
	free(pem);
	return rc;
}

void jwt__keys_describe(const struct jwt_keys *keys, char *buf, size_t len)
{
	size_t rsa = 0, ec = 0;

	for(size_t i = 0; i < keys->count; i++){
		if(keys->kinds[i] == KEY_RSA) rsa++; else ec++;
	}
	snprintf(buf, len, "%s%s%zu RSA key(s), %zu EC P-256 key(s)", keys->secret ? "HS256 secret" : "",
			keys->secret ? ", " : "", rsa, ec);
}

/* ====================================================================== *
 * Verification
 * ====================================================================== */

const char *jwt__result_name(enum jwt_result r)
{
	switch(r){
		case JWT_OK: return "ok";
		case JWT_MALFORMED: return "malformed token";
		case JWT_BAD_ALG: return "algorithm not accepted";
		case JWT_BAD_SIGNATURE: return "bad signature";
		case JWT_EXPIRED: return "expired";
		case JWT_NOT_YET_VALID: return "not yet valid";
		case JWT_BAD_ISSUER: return "wrong issuer";
		case JWT_BAD_AUDIENCE: return "wrong audience";
		case JWT_BAD_SUBJECT: return "subject is not the username";
		case JWT_ERROR: return "internal error";
	}
	return "?";
}

static enum jwt_result fail(char *why, size_t whylen, enum jwt_result r, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
static enum jwt_result fail(char *why, size_t whylen, enum jwt_result r, const char *fmt, ...)
{
	va_list ap;
	char detail[160];

	va_start(ap, fmt);
	vsnprintf(detail, sizeof(detail), fmt, ap);
	va_end(ap);
	snprintf(why, whylen, "%s: %s", jwt__result_name(r), detail);
	return r;
}

static int b64url_value(unsigned char c)
{
	if(c >= 'A' && c <= 'Z') return c - 'A';
	if(c >= 'a' && c <= 'z') return c - 'a' + 26;
	if(c >= '0' && c <= '9') return c - '0' + 52;
	if(c == '-') return 62;
	if(c == '_') return 63;
	return -1;
}

/* Strict base64url without padding (RFC 7515 2): only the URL alphabet, no
 * '=', no length of 1 mod 4, and the unused low bits of the last character
 * zero, so every byte string has exactly one encoding. out needs len*3/4
 * bytes. Returns the decoded length or -1. */
static long b64url_decode(const char *in, size_t len, unsigned char *out)
{
	uint32_t acc = 0;
	size_t bits = 0, n = 0;

	if(len % 4 == 1) return -1;
	for(size_t i = 0; i < len; i++){
		int v = b64url_value((unsigned char)in[i]);
		if(v < 0) return -1;
		acc = (acc << 6) | (uint32_t)v;
		bits += 6;
		if(bits >= 8){
			bits -= 8;
			out[n++] = (unsigned char)(acc >> bits);
		}
	}
	if(acc & ((1u << bits) - 1)) return -1;
	return (long)n;
}

/* Decodes one segment into a malloc'd buffer (NULL on error; *r says why). */
static unsigned char *decode_segment(const char *s, size_t len, size_t *out_len, const char *what,
		char *why, size_t whylen, enum jwt_result *r)
{
	unsigned char *buf = malloc(len * 3 / 4 + 1);
	long n;

	if(!buf){
		*r = fail(why, whylen, JWT_ERROR, "out of memory");
		return NULL;
	}
	n = b64url_decode(s, len, buf);
	if(n < 0){
		free(buf);
		*r = fail(why, whylen, JWT_MALFORMED, "the %s is not strict base64url", what);
		return NULL;
	}
	*out_len = (size_t)n;
	return buf;
}

/* A JSON object (through json.c: UTF-8, no trailing bytes) whose member
 * names are unique: with duplicates, which "exp" or "alg" counts would be a
 * matter of parser. */
static cJSON *parse_segment(const unsigned char *buf, size_t len, const char *what, char *why, size_t whylen,
		enum jwt_result *r)
{
	struct chat_error e;
	cJSON *obj = NULL;

	if(json__parse_object(buf, len, JWT_TOKEN_MAX, &obj, &e) != CHAT_E_OK){
		*r = fail(why, whylen, JWT_MALFORMED, "the %s is not a JSON object", what);
		return NULL;
	}
	for(const cJSON *a = obj->child; a; a = a->next){
		for(const cJSON *b = a->next; b; b = b->next){
			if(!strcmp(a->string, b->string)){
				cJSON_Delete(obj);
				*r = fail(why, whylen, JWT_MALFORMED, "the %s has a duplicate member", what);
				return NULL;
			}
		}
	}
	return obj;
}

enum alg { ALG_HS256, ALG_RS256, ALG_ES256 };

/* Checks the header; returns JWT_OK and the algorithm. */
static enum jwt_result check_header(const cJSON *h, const struct jwt_keys *keys, enum alg *alg, char *why,
		size_t whylen)
{
	const cJSON *a = cJSON_GetObjectItemCaseSensitive(h, "alg");
	const cJSON *typ = cJSON_GetObjectItemCaseSensitive(h, "typ");
	bool have_rsa = false, have_ec = false;

	if(cJSON_GetObjectItemCaseSensitive(h, "crit")){
		return fail(why, whylen, JWT_MALFORMED, "the header has \"crit\" extensions");
	}
	if(typ && (!cJSON_IsString(typ) || strcasecmp(typ->valuestring, "JWT"))){
		return fail(why, whylen, JWT_MALFORMED, "the header's \"typ\" is not \"JWT\"");
	}
	if(!cJSON_IsString(a)){
		return fail(why, whylen, JWT_MALFORMED, "the header has no \"alg\" string");
	}
	for(size_t i = 0; i < keys->count; i++){
		if(keys->kinds[i] == KEY_RSA) have_rsa = true; else have_ec = true;
	}
	if(!strcmp(a->valuestring, "HS256")){
		*alg = ALG_HS256;
		if(!keys->secret) return fail(why, whylen, JWT_BAD_ALG, "HS256 but no HS256 secret is configured");
	}else if(!strcmp(a->valuestring, "RS256")){
		*alg = ALG_RS256;
		if(!have_rsa) return fail(why, whylen, JWT_BAD_ALG, "RS256 but no RSA public key is configured");
	}else if(!strcmp(a->valuestring, "ES256")){
		*alg = ALG_ES256;
		if(!have_ec) return fail(why, whylen, JWT_BAD_ALG, "ES256 but no EC P-256 public key is configured");
	}else if(!strcasecmp(a->valuestring, "none")){
		return fail(why, whylen, JWT_BAD_ALG, "unsigned tokens (alg none) are never accepted");
	}else{
		return fail(why, whylen, JWT_BAD_ALG, "only HS256, RS256 and ES256 are accepted");
	}
	return JWT_OK;
}

/* One public key against a signature (DER for EC). 1 = valid, 0 = not, -1 = error. */
static int pkey_verify(EVP_PKEY *pk, const unsigned char *sig, size_t siglen, const char *msg, size_t msglen)
{
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	int rc = -1;

	if(ctx && EVP_DigestVerifyInit(ctx, NULL, EVP_sha256(), NULL, pk) == 1){
		rc = EVP_DigestVerify(ctx, sig, siglen, (const unsigned char *)msg, msglen) == 1;
	}
	EVP_MD_CTX_free(ctx);
	ERR_clear_error();
	return rc;
}

/* JWS ES256 signatures are r||s, 32 bytes each; OpenSSL wants DER. */
static unsigned char *es256_to_der(const unsigned char *sig, int *der_len)
{
	ECDSA_SIG *es = ECDSA_SIG_new();
	BIGNUM *r = BN_bin2bn(sig, 32, NULL), *s = BN_bin2bn(sig + 32, 32, NULL);
	unsigned char *der = NULL;

	*der_len = -1;
	if(!es || !r || !s || !ECDSA_SIG_set0(es, r, s)){
		BN_free(r);
		BN_free(s);
		ECDSA_SIG_free(es);
		return NULL;
	}
	*der_len = i2d_ECDSA_SIG(es, &der);
	ECDSA_SIG_free(es);
	return *der_len > 0 ? der : NULL;
}

static enum jwt_result check_signature(const struct jwt_keys *keys, enum alg alg, const unsigned char *sig,
		size_t siglen, const char *msg, size_t msglen, char *why, size_t whylen)
{
	enum key_kind want = alg == ALG_RS256 ? KEY_RSA : KEY_EC;
	unsigned char *der = NULL;
	int der_len = 0, ok = 0;

	if(alg == ALG_HS256){
		unsigned char mac[EVP_MAX_MD_SIZE];
		unsigned int maclen = 0;
		if(siglen != 32){
			return fail(why, whylen, JWT_BAD_SIGNATURE, "an HS256 signature is 32 bytes, not %zu", siglen);
		}
		if(!HMAC(EVP_sha256(), keys->secret, (int)keys->secret_len, (const unsigned char *)msg, msglen,
					mac, &maclen) || maclen != 32){
			return fail(why, whylen, JWT_ERROR, "HMAC failed");
		}
		if(CRYPTO_memcmp(mac, sig, 32)){
			return fail(why, whylen, JWT_BAD_SIGNATURE, "HS256 signature does not match the secret");
		}
		return JWT_OK;
	}
	if(alg == ALG_ES256){
		if(siglen != 64){
			return fail(why, whylen, JWT_BAD_SIGNATURE, "an ES256 signature is 64 bytes, not %zu", siglen);
		}
		der = es256_to_der(sig, &der_len);
		if(!der) return fail(why, whylen, JWT_ERROR, "could not encode the ES256 signature");
	}
	for(size_t i = 0; i < keys->count && ok != 1; i++){
		if(keys->kinds[i] != want) continue;
		if(alg == ALG_RS256 && siglen != (size_t)EVP_PKEY_get_size(keys->pkeys[i])) continue;
		ok = der ? pkey_verify(keys->pkeys[i], der, (size_t)der_len, msg, msglen)
			: pkey_verify(keys->pkeys[i], sig, siglen, msg, msglen);
	}
	OPENSSL_free(der);
	if(ok != 1){
		return fail(why, whylen, JWT_BAD_SIGNATURE, "%s signature does not match any configured key",
				alg == ALG_RS256 ? "RS256" : "ES256");
	}
	return JWT_OK;
}

/* A NumericDate claim: absent (present=false) or a finite number in a sane range. */
static int numeric_claim(const cJSON *claims, const char *name, double *out, bool *present)
{
	const cJSON *c = cJSON_GetObjectItemCaseSensitive(claims, name);

	*present = c != NULL;
	if(!c) return 0;
	if(!cJSON_IsNumber(c) || !isfinite(c->valuedouble) || c->valuedouble < 0 || c->valuedouble > 9007199254740991.0){
		return -1;
	}
	*out = c->valuedouble;
	return 0;
}

static enum jwt_result check_claims(const cJSON *claims, const struct jwt_config *cfg, const char *username,
		int64_t now, char *why, size_t whylen)
{
	const cJSON *sub = cJSON_GetObjectItemCaseSensitive(claims, "sub");
	const cJSON *iss = cJSON_GetObjectItemCaseSensitive(claims, "iss");
	const cJSON *aud = cJSON_GetObjectItemCaseSensitive(claims, "aud");
	double exp = 0, nbf = 0, iat = 0, t = (double)now, leeway = (double)cfg->leeway_s;
	bool has_exp, has_nbf, has_iat;

	if(numeric_claim(claims, "exp", &exp, &has_exp) || numeric_claim(claims, "nbf", &nbf, &has_nbf)
			|| numeric_claim(claims, "iat", &iat, &has_iat)){
		return fail(why, whylen, JWT_MALFORMED, "exp, nbf and iat must be non-negative numbers");
	}
	if(!has_exp){
		return fail(why, whylen, JWT_MALFORMED, "the token has no \"exp\" claim");
	}
	if(t >= exp + leeway){
		return fail(why, whylen, JWT_EXPIRED, "expired %.0f s ago (leeway %u s)", t - exp, cfg->leeway_s);
	}
	if(has_nbf && t + leeway < nbf){
		return fail(why, whylen, JWT_NOT_YET_VALID, "valid only in %.0f s (leeway %u s)", nbf - t, cfg->leeway_s);
	}
	if((iss && !cJSON_IsString(iss)) || (cfg->issuer && (!iss || strcmp(iss->valuestring, cfg->issuer)))){
		return fail(why, whylen, JWT_BAD_ISSUER, "\"iss\" is %s plugin_opt_jwt_issuer",
				iss ? "not" : "missing; required by");
	}
	if(aud && !cJSON_IsString(aud) && !cJSON_IsArray(aud)){
		return fail(why, whylen, JWT_MALFORMED, "\"aud\" is neither a string nor an array");
	}
	if(cJSON_IsArray(aud)){
		for(const cJSON *a = aud->child; a; a = a->next){
			if(!cJSON_IsString(a)) return fail(why, whylen, JWT_MALFORMED, "\"aud\" has a member that is not a string");
		}
	}
	if(cfg->audience){
		bool found = false;
		if(cJSON_IsString(aud)){
			found = !strcmp(aud->valuestring, cfg->audience);
		}else if(aud){
			for(const cJSON *a = aud->child; a && !found; a = a->next){
				found = !strcmp(a->valuestring, cfg->audience);
			}
		}
		if(!found){
			return fail(why, whylen, JWT_BAD_AUDIENCE, "\"aud\" %s plugin_opt_jwt_audience",
					aud ? "does not name" : "is missing; required by");
		}
	}
	if(!cJSON_IsString(sub)){
		return fail(why, whylen, JWT_BAD_SUBJECT, "the token has no \"sub\" string");
	}
	if(!username || strcmp(sub->valuestring, username)){
		return fail(why, whylen, JWT_BAD_SUBJECT, "\"sub\" is not the MQTT username");
	}
	return JWT_OK;
}

enum jwt_result jwt__verify(const struct jwt_keys *keys, const struct jwt_config *cfg, const char *token,
		size_t len, const char *username, int64_t now, char *why, size_t whylen)
{
	const char *dot1, *dot2;
	unsigned char *hbuf = NULL, *pbuf = NULL, *sbuf = NULL;
	size_t hlen, plen, slen, hl = 0, pl = 0, sl = 0;
	cJSON *header = NULL, *claims = NULL;
	enum jwt_result r = JWT_OK;
	enum alg alg = ALG_HS256;

	if(whylen) why[0] = '\0';
	if(!keys) return fail(why, whylen, JWT_ERROR, "no keys loaded");
	if(!token || len == 0) return fail(why, whylen, JWT_MALFORMED, "empty password");
	if(len > JWT_TOKEN_MAX) return fail(why, whylen, JWT_MALFORMED, "longer than %d bytes", JWT_TOKEN_MAX);
	dot1 = memchr(token, '.', len);
	dot2 = dot1 ? memchr(dot1 + 1, '.', len - (size_t)(dot1 + 1 - token)) : NULL;
	if(!dot2 || memchr(dot2 + 1, '.', len - (size_t)(dot2 + 1 - token))){
		return fail(why, whylen, JWT_MALFORMED, "not three dot-separated segments");
	}
	hlen = (size_t)(dot1 - token);
	plen = (size_t)(dot2 - dot1 - 1);
	slen = len - (size_t)(dot2 + 1 - token);
	if(hlen == 0 || plen == 0) return fail(why, whylen, JWT_MALFORMED, "an empty header or payload");
	if(hlen > JWT_HEADER_MAX) return fail(why, whylen, JWT_MALFORMED, "header longer than %d bytes", JWT_HEADER_MAX);

	if(!(hbuf = decode_segment(token, hlen, &hl, "header", why, whylen, &r))) goto done;
	if(!(header = parse_segment(hbuf, hl, "header", why, whylen, &r))) goto done;
	if((r = check_header(header, keys, &alg, why, whylen)) != JWT_OK) goto done;
	if(!(sbuf = decode_segment(dot2 + 1, slen, &sl, "signature", why, whylen, &r))) goto done;
	if((r = check_signature(keys, alg, sbuf, sl, token, (size_t)(dot2 - token), why, whylen)) != JWT_OK) goto done;
	if(!(pbuf = decode_segment(dot1 + 1, plen, &pl, "payload", why, whylen, &r))) goto done;
	if(!(claims = parse_segment(pbuf, pl, "payload", why, whylen, &r))) goto done;
	r = check_claims(claims, cfg, username, now, why, whylen);
done:
	cJSON_Delete(header);
	cJSON_Delete(claims);
	free(hbuf);
	free(pbuf);
	free(sbuf);
	return r;
}
