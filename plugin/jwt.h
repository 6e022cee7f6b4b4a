/*
 * jwt.h — optional JWT login (plugin_opt_auth jwt): options, keys, verifier.
 *
 * No broker symbols: plugin.c turns BASIC_AUTH and RELOAD events into calls
 * on this, and unit tests and fuzzers drive jwt__verify directly. Crypto is
 * OpenSSL's libcrypto; JSON is cJSON (through json.c).
 */
#ifndef CHAT_JWT_H
#define CHAT_JWT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define JWT_TOKEN_MAX 8192          /* longest password we try to verify */
#define JWT_HEADER_MAX 1024         /* longest encoded header segment */
#define JWT_KEYS_MAX 16             /* public keys per key file */
#define JWT_SECRET_MIN 32           /* HS256 secrets: at least 256 bits (RFC 7518 3.2) */
#define JWT_SECRET_MAX 4096
#define JWT_PEM_MAX (1024 * 1024)

enum chat_auth {
	CHAT_AUTH_NONE = 0,     /* logins are mosquitto's (password_file, dynsec, anonymous) */
	CHAT_AUTH_JWT = 1,      /* the plugin decides every login: password = a signed JWT */
};

struct jwt_config {
	enum chat_auth mode;
	char *hs256_secret_file;    /* HS256 shared secret (the file's bytes, one trailing newline dropped) */
	char *public_key_file;      /* PEM "PUBLIC KEY" blocks: RSA >= 2048 bits (RS256), EC P-256 (ES256) */
	char *issuer;               /* required "iss" when set */
	char *audience;             /* required in "aud" (string or array) when set */
	unsigned leeway_s;          /* clock skew allowed on exp and nbf */
	bool set_without_mode;      /* some jwt_* option given: needs auth jwt */
	char **defer_users;         /* logins left to mosquitto (password_file, dynsec), e.g. the push bridge */
	size_t defer_user_count;
};

void jwt__config_defaults(struct jwt_config *cfg);
/* Applies plugin_opt_auth or one plugin_opt_jwt_* option (except
 * jwt_defer_users, a user list parsed by config.c). Returns 0, or -1 with a
 * sentence naming the option in err. */
int jwt__config_set(struct jwt_config *cfg, const char *key, const char *value, char *err, size_t errlen);
/* Cross-option checks at start: jwt_* options need auth jwt, auth jwt needs a key file. */
int jwt__config_check(const struct jwt_config *cfg, char *err, size_t errlen);
void jwt__config_free(struct jwt_config *cfg);
bool jwt__is_deferred(const struct jwt_config *cfg, const char *user);

/* The verification keys. Opaque: EVP_PKEYs stay inside jwt.c. */
struct jwt_keys;

/* Reads the key files named by cfg. Returns 0 and *out, or -1 with a
 * sentence in err (and *out NULL): a missing, unreadable, short or
 * unparsable file, or a key of the wrong kind or size. */
int jwt__keys_load(const struct jwt_config *cfg, struct jwt_keys **out, char *err, size_t errlen);
/* The same from memory (tests, fuzzers): secret (may be NULL) and PEM text
 * (may be NULL); at least one must be given. */
int jwt__keys_from_memory(const void *secret, size_t secret_len, const char *pem, size_t pem_len,
		struct jwt_keys **out, char *err, size_t errlen);
/* "HS256 secret, 1 RSA key, 1 EC P-256 key" for the log. */
void jwt__keys_describe(const struct jwt_keys *keys, char *buf, size_t len);
void jwt__keys_free(struct jwt_keys *keys);

enum jwt_result {
	JWT_OK = 0,
	JWT_MALFORMED,          /* not a compact JWS of base64url JSON, sizes exceeded, bad claim types */
	JWT_BAD_ALG,            /* alg none, unknown, or no configured key for it */
	JWT_BAD_SIGNATURE,
	JWT_EXPIRED,
	JWT_NOT_YET_VALID,
	JWT_BAD_ISSUER,
	JWT_BAD_AUDIENCE,
	JWT_BAD_SUBJECT,        /* sub missing or not the MQTT username */
	JWT_ERROR,              /* out of memory or a crypto library failure */
};

/* Verifies a compact JWS (token, len bytes, no NUL needed) as the password of
 * `username` at unix time `now`: size and base64url strictness, header
 * (alg HS256/RS256/ES256 with a matching configured key; never none), the
 * signature, then exp (required), nbf, iss, aud and sub == username. Returns
 * JWT_OK or the first failure, with a sentence in why that never contains the
 * token or its signature. keys and cfg are only read: safe to call from a
 * fuzzer with any bytes. */
enum jwt_result jwt__verify(const struct jwt_keys *keys, const struct jwt_config *cfg, const char *token,
		size_t len, const char *username, int64_t now, char *why, size_t whylen);
const char *jwt__result_name(enum jwt_result r);

#endif
