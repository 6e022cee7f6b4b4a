/* JWT verification (jwt.c): each algorithm, each claim failure, algorithm
 * confusion, malformed input, key loading and options. Tokens are made here
 * with OpenSSL: keys generated per run, signatures by EVP_DigestSign. */
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>

#include "chat.h"
#include "check.h"
#include "b64url.h"

#define NOW 1700000000LL
static const char SECRET[] = "0123456789abcdef0123456789abcdef-test-secret";

/* ---------------------------------------------------------------- helpers */

static EVP_PKEY *rsa_key, *ec_key, *rsa_key2;
static char *rsa_pem, *ec_pem, *rsa2_pem;

static char *pub_pem(EVP_PKEY *k)
{
	BIO *b = BIO_new(BIO_s_mem());
	char *data, *out;
	long n;
	PEM_write_bio_PUBKEY(b, k);
	n = BIO_get_mem_data(b, &data);
	out = strndup(data, (size_t)n);
	BIO_free(b);
	return out;
}

/* signing input "h.p" signed as alg with key (HS256: SECRET or `hs_secret`) */
static size_t sign(const char *alg, EVP_PKEY *key, const char *hs_secret, const char *msg, unsigned char *sig)
{
	size_t siglen = 512;
	if(!strcmp(alg, "HS256")){
		unsigned int l = 0;
		HMAC(EVP_sha256(), hs_secret, (int)strlen(hs_secret), (const unsigned char *)msg, strlen(msg), sig, &l);
		return l;
	}
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	EVP_DigestSignInit(ctx, NULL, EVP_sha256(), NULL, key);
	EVP_DigestSign(ctx, sig, &siglen, (const unsigned char *)msg, strlen(msg));
	EVP_MD_CTX_free(ctx);
	if(!strcmp(alg, "ES256")){
		/* DER -> r||s */
		const unsigned char *p = sig;
		ECDSA_SIG *es = d2i_ECDSA_SIG(NULL, &p, (long)siglen);
		unsigned char raw[64];
		BN_bn2binpad(ECDSA_SIG_get0_r(es), raw, 32);
		BN_bn2binpad(ECDSA_SIG_get0_s(es), raw + 32, 32);
		ECDSA_SIG_free(es);
		memcpy(sig, raw, 64);
		siglen = 64;
	}
	return siglen;
}

/* A token with the given header and claims JSON; static buffer. */
static char *token_full(const char *header, const char *claims, const char *alg, EVP_PKEY *key, const char *hs)
{
	static char tok[16384];
	unsigned char sig[1024];
	size_t n;
	b64url((const unsigned char *)header, strlen(header), tok);
	strcat(tok, ".");
	b64url((const unsigned char *)claims, strlen(claims), tok + strlen(tok));
	n = sign(alg, key, hs, tok, sig);
	strcat(tok, ".");
	b64url(sig, n, tok + strlen(tok));
	return tok;
}

static char *token(const char *alg, const char *claims)
{
	char header[128];
	EVP_PKEY *k = !strcmp(alg, "RS256") ? rsa_key : ec_key;
	snprintf(header, sizeof(header), "{\"alg\":\"%s\",\"typ\":\"JWT\"}", alg);
	return token_full(header, claims, alg, k, SECRET);
}

static struct jwt_keys *all_keys(void)
{
	char pem[16384], err[256];
	struct jwt_keys *k = NULL;
	snprintf(pem, sizeof(pem), "%s%s", rsa_pem, ec_pem);
	if(jwt__keys_from_memory(SECRET, strlen(SECRET), pem, strlen(pem), &k, err, sizeof(err))){
		fprintf(stderr, "keys: %s\n", err);
		exit(1);
	}
	return k;
}

static enum jwt_result verify(const struct jwt_keys *k, const struct jwt_config *cfg, const char *tok,
		const char *user)
{
	char why[256];
	enum jwt_result r = jwt__verify(k, cfg, tok, strlen(tok), user, NOW, why, sizeof(why));
	CHECK(r == JWT_OK ? why[0] == '\0' : why[0] != '\0');
	return r;
}

#define CLAIMS(extra) "{\"sub\":\"alice\",\"exp\":1700000600" extra "}"

/* ---------------------------------------------------------------- tests */

static void test_algorithms(const struct jwt_keys *k, const struct jwt_config *cfg)
{
	const char *algs[] = {"HS256", "RS256", "ES256"};
	for(int i = 0; i < 3; i++){
		char *t = token(algs[i], CLAIMS(",\"iat\":1699999000"));
		CHECK_EQ_INT(verify(k, cfg, t, "alice"), JWT_OK);
		CHECK_EQ_INT(verify(k, cfg, t, "bob"), JWT_BAD_SUBJECT);
		CHECK_EQ_INT(verify(k, cfg, t, NULL), JWT_BAD_SUBJECT);
		/* flip one signature character (still canonical base64url: not the last one) */
		char *sig = strrchr(t, '.') + 2;
		*sig = *sig == 'A' ? 'B' : 'A';
		CHECK_EQ_INT(verify(k, cfg, t, "alice"), JWT_BAD_SIGNATURE);
	}
	/* a signature by a key that is not configured */
	CHECK_EQ_INT(verify(k, cfg, token_full("{\"alg\":\"RS256\"}", CLAIMS(""), "RS256", rsa_key2, NULL), "alice"),
			JWT_BAD_SIGNATURE);
	CHECK_EQ_INT(verify(k, cfg, token_full("{\"alg\":\"HS256\"}", CLAIMS(""), "HS256", NULL,
			"another-secret-of-enough-length-0123456789"), "alice"), JWT_BAD_SIGNATURE);
	/* no typ is fine; typ other than JWT is not */
	CHECK_EQ_INT(verify(k, cfg, token_full("{\"alg\":\"ES256\"}", CLAIMS(""), "ES256", ec_key, NULL), "alice"),
			JWT_OK);
	CHECK_EQ_INT(verify(k, cfg, token_full("{\"alg\":\"HS256\",\"typ\":\"at+jwt\"}", CLAIMS(""), "HS256", NULL,
			SECRET), "alice"), JWT_MALFORMED);
	CHECK_EQ_INT(verify(k, cfg, token_full("{\"alg\":\"HS256\",\"crit\":[\"b64\"],\"b64\":false}", CLAIMS(""),
			"HS256", NULL, SECRET), "alice"), JWT_MALFORMED);
}

static void test_claims(const struct jwt_keys *k)
{
	struct jwt_config cfg;
	jwt__config_defaults(&cfg);

	/* exp: required, leeway 30 s */
	CHECK_EQ_INT(verify(k, &cfg, token("HS256", "{\"sub\":\"alice\"}"), "alice"), JWT_MALFORMED);
	CHECK_EQ_INT(verify(k, &cfg, token("HS256", "{\"sub\":\"alice\",\"exp\":1699999900}"), "alice"), JWT_EXPIRED);
	CHECK_EQ_INT(verify(k, &cfg, token("HS256", "{\"sub\":\"alice\",\"exp\":1699999980}"), "alice"), JWT_OK);
	CHECK_EQ_INT(verify(k, &cfg, token("HS256", "{\"sub\":\"alice\",\"exp\":1699999970}"), "alice"), JWT_EXPIRED);
	CHECK_EQ_INT(verify(k, &cfg, token("HS256", "{\"sub\":\"alice\",\"exp\":\"1700000600\"}"), "alice"),
			JWT_MALFORMED);
	CHECK_EQ_INT(verify(k, &cfg, token("HS256", "{\"sub\":\"alice\",\"exp\":-1}"), "alice"), JWT_MALFORMED);
	CHECK_EQ_INT(verify(k, &cfg, token("HS256", "{\"sub\":\"alice\",\"exp\":1e400}"), "alice"), JWT_MALFORMED);
	/* nbf */
	CHECK_EQ_INT(verify(k, &cfg, token("HS256", CLAIMS(",\"nbf\":1700000100")), "alice"), JWT_NOT_YET_VALID);
	CHECK_EQ_INT(verify(k, &cfg, token("HS256", CLAIMS(",\"nbf\":1700000020")), "alice"), JWT_OK);
	CHECK_EQ_INT(verify(k, &cfg, token("HS256", CLAIMS(",\"nbf\":null")), "alice"), JWT_MALFORMED);
	cfg.leeway_s = 0;
	CHECK_EQ_INT(verify(k, &cfg, token("HS256", CLAIMS(",\"nbf\":1700000020")), "alice"), JWT_NOT_YET_VALID);
	CHECK_EQ_INT(verify(k, &cfg, token("HS256", "{\"sub\":\"alice\",\"exp\":1700000000}"), "alice"), JWT_EXPIRED);
	CHECK_EQ_INT(verify(k, &cfg, token("HS256", "{\"sub\":\"alice\",\"exp\":1700000001}"), "alice"), JWT_OK);
	cfg.leeway_s = 30;
	/* sub */
	CHECK_EQ_INT(verify(k, &cfg, token("HS256", "{\"exp\":1700000600}"), "alice"), JWT_BAD_SUBJECT);
	CHECK_EQ_INT(verify(k, &cfg, token("HS256", "{\"sub\":7,\"exp\":1700000600}"), "alice"), JWT_BAD_SUBJECT);
	CHECK_EQ_INT(verify(k, &cfg, token("HS256", "{\"sub\":\"Alice\",\"exp\":1700000600}"), "alice"), JWT_BAD_SUBJECT);
	/* iss: free when not configured (but a string), exact when configured */
	CHECK_EQ_INT(verify(k, &cfg, token("HS256", CLAIMS(",\"iss\":\"anyone\"")), "alice"), JWT_OK);
	CHECK_EQ_INT(verify(k, &cfg, token("HS256", CLAIMS(",\"iss\":5")), "alice"), JWT_BAD_ISSUER);
	cfg.issuer = strdup("https://id.example");
	CHECK_EQ_INT(verify(k, &cfg, token("HS256", CLAIMS(",\"iss\":\"https://id.example\"")), "alice"), JWT_OK);
	CHECK_EQ_INT(verify(k, &cfg, token("HS256", CLAIMS(",\"iss\":\"https://evil.example\"")), "alice"),
			JWT_BAD_ISSUER);
	CHECK_EQ_INT(verify(k, &cfg, token("HS256", CLAIMS("")), "alice"), JWT_BAD_ISSUER);
	free(cfg.issuer);
	cfg.issuer = NULL;
	/* aud: string or array of strings */
	CHECK_EQ_INT(verify(k, &cfg, token("HS256", CLAIMS(",\"aud\":{}")), "alice"), JWT_MALFORMED);
	cfg.audience = strdup("chat");
	CHECK_EQ_INT(verify(k, &cfg, token("HS256", CLAIMS(",\"aud\":\"chat\"")), "alice"), JWT_OK);
	CHECK_EQ_INT(verify(k, &cfg, token("HS256", CLAIMS(",\"aud\":[\"web\",\"chat\"]")), "alice"), JWT_OK);
	CHECK_EQ_INT(verify(k, &cfg, token("HS256", CLAIMS(",\"aud\":[\"web\"]")), "alice"), JWT_BAD_AUDIENCE);
	CHECK_EQ_INT(verify(k, &cfg, token("HS256", CLAIMS(",\"aud\":[]")), "alice"), JWT_BAD_AUDIENCE);
	CHECK_EQ_INT(verify(k, &cfg, token("HS256", CLAIMS(",\"aud\":\"chat2\"")), "alice"), JWT_BAD_AUDIENCE);
	CHECK_EQ_INT(verify(k, &cfg, token("HS256", CLAIMS("")), "alice"), JWT_BAD_AUDIENCE);
	CHECK_EQ_INT(verify(k, &cfg, token("HS256", CLAIMS(",\"aud\":[\"chat\",1]")), "alice"), JWT_MALFORMED);
	/* duplicate claims are refused, whichever would win */
	CHECK_EQ_INT(verify(k, &cfg, token("HS256", "{\"sub\":\"alice\",\"exp\":1,\"exp\":1700000600,\"aud\":\"chat\"}"),
			"alice"), JWT_MALFORMED);
	jwt__config_free(&cfg);
}

/* Algorithm confusion and algorithms without a key. */
static void test_alg_confusion(const struct jwt_keys *all, const struct jwt_config *cfg)
{
	struct jwt_keys *pub_only = NULL, *hs_only = NULL, *ec_only = NULL;
	char err[256], none[512];

	CHECK_EQ_INT(jwt__keys_from_memory(NULL, 0, rsa_pem, strlen(rsa_pem), &pub_only, err, sizeof(err)), 0);
	CHECK_EQ_INT(jwt__keys_from_memory(SECRET, strlen(SECRET), NULL, 0, &hs_only, err, sizeof(err)), 0);
	CHECK_EQ_INT(jwt__keys_from_memory(NULL, 0, ec_pem, strlen(ec_pem), &ec_only, err, sizeof(err)), 0);
	/* HS256 "signed" with the public key's PEM text as the HMAC secret */
	CHECK_EQ_INT(verify(pub_only, cfg, token_full("{\"alg\":\"HS256\"}", CLAIMS(""), "HS256", NULL, rsa_pem),
			"alice"), JWT_BAD_ALG);
	CHECK_EQ_INT(verify(all, cfg, token_full("{\"alg\":\"HS256\"}", CLAIMS(""), "HS256", NULL, rsa_pem),
			"alice"), JWT_BAD_SIGNATURE);
	CHECK_EQ_INT(verify(hs_only, cfg, token("RS256", CLAIMS("")), "alice"), JWT_BAD_ALG);
	CHECK_EQ_INT(verify(ec_only, cfg, token("RS256", CLAIMS("")), "alice"), JWT_BAD_ALG);
	CHECK_EQ_INT(verify(pub_only, cfg, token("ES256", CLAIMS("")), "alice"), JWT_BAD_ALG);
	CHECK_EQ_INT(verify(ec_only, cfg, token("ES256", CLAIMS("")), "alice"), JWT_OK);
	CHECK_EQ_INT(verify(pub_only, cfg, token("RS256", CLAIMS("")), "alice"), JWT_OK);
	CHECK_EQ_INT(verify(hs_only, cfg, token("HS256", CLAIMS("")), "alice"), JWT_OK);
	/* alg none, with and without a signature; other algorithms */
	const char *headers[] = {"{\"alg\":\"none\"}", "{\"alg\":\"None\"}", "{\"alg\":\"HS384\"}",
		"{\"alg\":\"PS256\"}", "{\"alg\":\"hs256\"}", "{\"alg\":[\"HS256\"]}", "{\"typ\":\"JWT\"}"};
	for(size_t i = 0; i < sizeof(headers) / sizeof(headers[0]); i++){
		b64url((const unsigned char *)headers[i], strlen(headers[i]), none);
		strcat(none, ".");
		b64url((const unsigned char *)CLAIMS(""), strlen(CLAIMS("")), none + strlen(none));
		strcat(none, ".");
		CHECK(verify(all, cfg, none, "alice") == (i < 5 ? JWT_BAD_ALG : JWT_MALFORMED));
		strcat(none, "c2lnbmF0dXJl");
		CHECK(verify(all, cfg, none, "alice") == (i < 5 ? JWT_BAD_ALG : JWT_MALFORMED));
	}
	jwt__keys_free(pub_only);
	jwt__keys_free(hs_only);
	jwt__keys_free(ec_only);
}

static void test_malformed(const struct jwt_keys *k, const struct jwt_config *cfg)
{
	char t[20000], why[256], good[4096];
	const char *bad[] = {"", ".", "..", "a.b", "a.b.c.d", "eyJ.eyJ.", "!!!.???.###",
		"eyJhbGciOiJIUzI1NiJ9..sig", ".eyJzdWIiOiJhIn0.sig"};

	strcpy(good, token("HS256", CLAIMS("")));   /* token() reuses its buffer */

	for(size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++){
		CHECK_EQ_INT(verify(k, cfg, bad[i], "alice"), JWT_MALFORMED);
	}
	CHECK_EQ_INT(jwt__verify(k, cfg, NULL, 0, "alice", NOW, why, sizeof(why)), JWT_MALFORMED);
	CHECK_EQ_INT(jwt__verify(NULL, cfg, good, strlen(good), "alice", NOW, why, sizeof(why)), JWT_ERROR);
	/* length-bounded: the same token with trailing bytes beyond len verifies */
	snprintf(t, sizeof(t), "%sGARBAGE", good);
	CHECK_EQ_INT(jwt__verify(k, cfg, t, strlen(good), "alice", NOW, why, sizeof(why)), JWT_OK);
	CHECK(jwt__verify(k, cfg, t, strlen(t), "alice", NOW, why, sizeof(why)) != JWT_OK);
	/* padding, standard-alphabet characters, whitespace */
	snprintf(t, sizeof(t), "%s=", good);
	CHECK_EQ_INT(verify(k, cfg, t, "alice"), JWT_MALFORMED);
	snprintf(t, sizeof(t), " %s", good);
	CHECK_EQ_INT(verify(k, cfg, t, "alice"), JWT_MALFORMED);
	strcpy(t, good);
	*strchr(t, '.') = '+';
	CHECK_EQ_INT(verify(k, cfg, t, "alice"), JWT_MALFORMED);
	/* non-canonical base64url: the HS256 signature (32 bytes = 43 chars) has
	 * 2 unused bits in its last character */
	strcpy(t, good);
	{
		static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
		char *last = t + strlen(t) - 1;
		int v = (int)(strchr(tab, *last) - tab);
		CHECK_EQ_INT(v & 3, 0);
		*last = tab[v ^ 1];   /* an unused bit: same bytes, second spelling */
		CHECK_EQ_INT(verify(k, cfg, t, "alice"), JWT_MALFORMED);
	}
	/* header / payload not JSON objects, duplicate header member, NUL escape */
	CHECK_EQ_INT(verify(k, cfg, token_full("[1]", CLAIMS(""), "HS256", NULL, SECRET), "alice"), JWT_MALFORMED);
	CHECK_EQ_INT(verify(k, cfg, token_full("{\"alg\":\"HS256\"", CLAIMS(""), "HS256", NULL, SECRET), "alice"),
			JWT_MALFORMED);
	CHECK_EQ_INT(verify(k, cfg, token_full("{\"alg\":\"none\",\"alg\":\"HS256\"}", CLAIMS(""), "HS256", NULL,
			SECRET), "alice"), JWT_MALFORMED);
	CHECK_EQ_INT(verify(k, cfg, token_full("{\"alg\":\"HS256\"} x", CLAIMS(""), "HS256", NULL, SECRET), "alice"),
			JWT_MALFORMED);
	CHECK_EQ_INT(verify(k, cfg, token("HS256", "\"just a string\""), "alice"), JWT_MALFORMED);
	CHECK_EQ_INT(verify(k, cfg, token("HS256", "{\"sub\":\"alice\\u0000x\",\"exp\":1700000600}"), "alice"),
			JWT_MALFORMED);
	CHECK_EQ_INT(verify(k, cfg, token("HS256", "{\"sub\":\"alice\",\"exp\":1700000600,\"x\":\"\xff\"}"), "alice"),
			JWT_MALFORMED);
	/* size limits */
	char hdr[1200];
	snprintf(hdr, sizeof(hdr), "{\"alg\":\"HS256\",\"x\":\"%0900d\"}", 0);
	CHECK_EQ_INT(verify(k, cfg, token_full(hdr, CLAIMS(""), "HS256", NULL, SECRET), "alice"), JWT_MALFORMED);
	char claims[9000];
	snprintf(claims, sizeof(claims), "{\"sub\":\"alice\",\"exp\":1700000600,\"x\":\"%08000d\"}", 0);
	CHECK_EQ_INT(verify(k, cfg, token("HS256", claims), "alice"), JWT_MALFORMED);
	/* wrong signature lengths */
	strcpy(t, good);
	strcpy(strrchr(t, '.') + 1, "AAAA");
	CHECK_EQ_INT(verify(k, cfg, t, "alice"), JWT_BAD_SIGNATURE);
	strcpy(t, token("ES256", CLAIMS("")));
	strcpy(strrchr(t, '.') + 1, "AAAA");
	CHECK_EQ_INT(verify(k, cfg, t, "alice"), JWT_BAD_SIGNATURE);
	strcpy(t, token("RS256", CLAIMS("")));
	strcpy(strrchr(t, '.') + 1, "AAAA");
	CHECK_EQ_INT(verify(k, cfg, t, "alice"), JWT_BAD_SIGNATURE);
}

/* Every single-byte change of valid tokens is refused, without a crash. */
static void test_mutations(const struct jwt_keys *k, const struct jwt_config *cfg)
{
	const char *algs[] = {"HS256", "RS256", "ES256"};
	char t[4096], why[256];
	unsigned seed = 12345;
	int accepted = 0;

	for(int a = 0; a < 3; a++){
		char good[4096];
		strcpy(good, token(algs[a], CLAIMS("")));
		for(int i = 0; i < 600; i++){
			size_t len = strlen(good), pos;
			strcpy(t, good);
			seed = seed * 1103515245u + 12345u;
			pos = (seed >> 8) % len;
			seed = seed * 1103515245u + 12345u;
			t[pos] = (char)(t[pos] ^ (1 + ((seed >> 8) % 255)));
			if(jwt__verify(k, cfg, t, len, "alice", NOW, why, sizeof(why)) == JWT_OK) accepted++;
		}
	}
	CHECK_EQ_INT(accepted, 0);
}

static void test_key_loading(void)
{
	struct jwt_keys *k = NULL;
	char err[256], buf[128], pem[20000];
	EVP_PKEY *small = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)1024);
	EVP_PKEY *p384 = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "secp384r1");
	char *small_pem = pub_pem(small), *p384_pem = pub_pem(p384);

	CHECK(jwt__keys_from_memory("short", 5, NULL, 0, &k, err, sizeof(err)) && !k);
	CHECK(strstr(err, "32") != NULL);
	/* 32 bytes plus a newline is a 32-byte secret */
	CHECK_EQ_INT(jwt__keys_from_memory("0123456789abcdef0123456789abcdef\n", 33, NULL, 0, &k, err, sizeof(err)), 0);
	jwt__keys_free(k);
	CHECK(jwt__keys_from_memory("0123456789abcdef0123456789abcde\n", 32, NULL, 0, &k, err, sizeof(err)) && !k);
	CHECK(jwt__keys_from_memory(NULL, 0, small_pem, strlen(small_pem), &k, err, sizeof(err)) && !k);
	CHECK(strstr(err, "2048") != NULL);
	CHECK(jwt__keys_from_memory(NULL, 0, p384_pem, strlen(p384_pem), &k, err, sizeof(err)) && !k);
	CHECK(strstr(err, "P-256") != NULL);
	CHECK(jwt__keys_from_memory(NULL, 0, "not a pem", 9, &k, err, sizeof(err)) && !k);
	CHECK(jwt__keys_from_memory(NULL, 0, "", 0, &k, err, sizeof(err)) && !k);
	CHECK(jwt__keys_from_memory(NULL, 0, NULL, 0, &k, err, sizeof(err)) && !k);
	/* a good key then a damaged block */
	snprintf(pem, sizeof(pem), "%s-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", ec_pem);
	CHECK(jwt__keys_from_memory(NULL, 0, pem, strlen(pem), &k, err, sizeof(err)) && !k);
	/* several keys: any of them verifies */
	snprintf(pem, sizeof(pem), "%s%s%s", rsa2_pem, ec_pem, rsa_pem);
	CHECK_EQ_INT(jwt__keys_from_memory(NULL, 0, pem, strlen(pem), &k, err, sizeof(err)), 0);
	jwt__keys_describe(k, buf, sizeof(buf));
	CHECK_EQ_STR(buf, "2 RSA key(s), 1 EC P-256 key(s)");
	{
		struct jwt_config cfg;
		jwt__config_defaults(&cfg);
		CHECK_EQ_INT(verify(k, &cfg, token("RS256", CLAIMS("")), "alice"), JWT_OK);
		CHECK_EQ_INT(verify(k, &cfg, token_full("{\"alg\":\"RS256\"}", CLAIMS(""), "RS256", rsa_key2, NULL),
				"alice"), JWT_OK);
	}
	jwt__keys_free(k);
	/* files */
	struct jwt_config cfg;
	jwt__config_defaults(&cfg);
	cfg.mode = CHAT_AUTH_JWT;
	cfg.hs256_secret_file = strdup("/nonexistent/secret");
	CHECK(jwt__keys_load(&cfg, &k, err, sizeof(err)) && !k);
	CHECK(strstr(err, "jwt_hs256_secret_file") && strstr(err, "/nonexistent/secret"));
	jwt__config_free(&cfg);

	EVP_PKEY_free(small);
	EVP_PKEY_free(p384);
	free(small_pem);
	free(p384_pem);
}

static void test_options(void)
{
	struct chat_config cfg;
	char err[256];

	config__defaults(&cfg);
	CHECK_EQ_INT(cfg.jwt.mode, CHAT_AUTH_NONE);
	CHECK_EQ_INT(cfg.jwt.leeway_s, 30);
	CHECK_EQ_INT(jwt__config_check(&cfg.jwt, err, sizeof(err)), 0);
	CHECK_EQ_INT(config__set(&cfg, "auth", "JWT", err, sizeof(err)), 0);
	CHECK_EQ_INT(cfg.jwt.mode, CHAT_AUTH_JWT);
	CHECK(jwt__config_check(&cfg.jwt, err, sizeof(err)) == -1 && strstr(err, "jwt_hs256_secret_file"));
	CHECK(config__set(&cfg, "auth", "basic", err, sizeof(err)) == -1 && strstr(err, "plugin_opt_auth"));
	CHECK_EQ_INT(config__set(&cfg, "jwt_leeway_s", "0", err, sizeof(err)), 0);
	CHECK_EQ_INT(config__set(&cfg, "jwt_leeway_s", "3600", err, sizeof(err)), 0);
	CHECK_EQ_INT(cfg.jwt.leeway_s, 3600);
	const char *bad_leeway[] = {"", "-1", "3601", "30s", " 30", "1e3", "99999999999999999999"};
	for(size_t i = 0; i < sizeof(bad_leeway) / sizeof(bad_leeway[0]); i++){
		CHECK(config__set(&cfg, "jwt_leeway_s", bad_leeway[i], err, sizeof(err)) == -1
				&& strstr(err, "plugin_opt_jwt_leeway_s"));
	}
	CHECK(config__set(&cfg, "jwt_issuer", "", err, sizeof(err)) == -1 && strstr(err, "jwt_issuer"));
	CHECK(config__set(&cfg, "jwt_whatever", "x", err, sizeof(err)) == -1 && strstr(err, "jwt_whatever"));
	CHECK_EQ_INT(config__set(&cfg, "jwt_public_key_file", "/etc/k.pem", err, sizeof(err)), 0);
	CHECK_EQ_INT(config__set(&cfg, "jwt_audience", "chat", err, sizeof(err)), 0);
	CHECK_EQ_INT(config__set(&cfg, "jwt_defer_users", "bridge, admin", err, sizeof(err)), 0);
	CHECK(config__set(&cfg, "jwt_defer_users", "a/b", err, sizeof(err)) == -1);
	CHECK(jwt__is_deferred(&cfg.jwt, "admin") && !jwt__is_deferred(&cfg.jwt, "alice")
			&& !jwt__is_deferred(&cfg.jwt, NULL));
	CHECK_EQ_INT(jwt__config_check(&cfg.jwt, err, sizeof(err)), 0);
	CHECK_EQ_INT(config__set(&cfg, "auth", "none", err, sizeof(err)), 0);
	CHECK(jwt__config_check(&cfg.jwt, err, sizeof(err)) == -1 && strstr(err, "plugin_opt_auth"));
	config__free(&cfg);
}

int main(void)
{
	struct jwt_keys *k;
	struct jwt_config cfg;

	rsa_key = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
	rsa_key2 = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)3072);
	ec_key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
	if(!rsa_key || !rsa_key2 || !ec_key){
		fprintf(stderr, "key generation failed\n");
		return 1;
	}
	rsa_pem = pub_pem(rsa_key);
	rsa2_pem = pub_pem(rsa_key2);
	ec_pem = pub_pem(ec_key);
	k = all_keys();
	jwt__config_defaults(&cfg);

	test_algorithms(k, &cfg);
	test_claims(k);
	test_alg_confusion(k, &cfg);
	test_malformed(k, &cfg);
	test_mutations(k, &cfg);
	test_key_loading();
	test_options();

	jwt__keys_free(k);
	EVP_PKEY_free(rsa_key);
	EVP_PKEY_free(rsa_key2);
	EVP_PKEY_free(ec_key);
	free(rsa_pem);
	free(rsa2_pem);
	free(ec_pem);
	CHECK_DONE();
}
