/*
 * json.c — what every parser of client input shares: id syntax, UTF-8
 * validation, error codes, and small cJSON readers that turn a wrong type into
 * a specific error instead of a crash.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "chat.h"

static const char *const err_codes[] = {
	[CHAT_E_OK] = "ok",
	[CHAT_E_TOO_LARGE] = "too_large",
	[CHAT_E_INVALID_UTF8] = "invalid_utf8",
	[CHAT_E_INVALID_JSON] = "invalid_json",
	[CHAT_E_INVALID_ID] = "invalid_id",
	[CHAT_E_INVALID_FIELD] = "invalid_field",
	[CHAT_E_UNKNOWN_FIELD] = "unknown_field",
	[CHAT_E_UNKNOWN_OP] = "unknown_op",
	[CHAT_E_NOT_MEMBER] = "not_member",
	[CHAT_E_FORBIDDEN] = "forbidden",
	[CHAT_E_TOO_MANY_MEMBERS] = "too_many_members",
	[CHAT_E_INVALID_RESPONSE_TOPIC] = "invalid_response_topic",
	[CHAT_E_NOT_SUPPORTED] = "not_supported",
	[CHAT_E_TOO_MANY_DEVICES] = "too_many_devices",
	[CHAT_E_STORAGE_FULL] = "storage_full",
	[CHAT_E_RATE_LIMITED] = "rate_limited",
	[CHAT_E_TOO_MANY_CONVERSATIONS] = "too_many_conversations",
	[CHAT_E_STORE] = "store_error",
	[CHAT_E_NOMEM] = "store_error",
};

const char *chat_err__code(enum chat_err code)
{
	if((size_t)code >= sizeof(err_codes) / sizeof(err_codes[0])) return "store_error";
	return err_codes[code];
}

enum chat_err chat__fail(struct chat_error *e, enum chat_err code, const char *fmt, ...)
{
	va_list ap;
	e->code = code;
	va_start(ap, fmt);
	vsnprintf(e->message, sizeof(e->message), fmt, ap);
	va_end(ap);
	return code;
}

uint64_t json__now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ====================================================================== *
 * Syntax
 * ====================================================================== */

/* What each byte may be in an id: ID_CHAR for A-Z a-z 0-9 _ . @ -, ID_COLON
 * for ':' (a cmid may hold it), nothing for the rest. A table: ids are checked
 * on every publish (topic, username, cmid). */
enum { ID_CHAR = 1, ID_COLON = 2 };
static const unsigned char id_class[256] = {
	['a'] = ID_CHAR, ['b'] = ID_CHAR, ['c'] = ID_CHAR, ['d'] = ID_CHAR, ['e'] = ID_CHAR, ['f'] = ID_CHAR,
	['g'] = ID_CHAR, ['h'] = ID_CHAR, ['i'] = ID_CHAR, ['j'] = ID_CHAR, ['k'] = ID_CHAR, ['l'] = ID_CHAR,
	['m'] = ID_CHAR, ['n'] = ID_CHAR, ['o'] = ID_CHAR, ['p'] = ID_CHAR, ['q'] = ID_CHAR, ['r'] = ID_CHAR,
	['s'] = ID_CHAR, ['t'] = ID_CHAR, ['u'] = ID_CHAR, ['v'] = ID_CHAR, ['w'] = ID_CHAR, ['x'] = ID_CHAR,
	['y'] = ID_CHAR, ['z'] = ID_CHAR,
	['A'] = ID_CHAR, ['B'] = ID_CHAR, ['C'] = ID_CHAR, ['D'] = ID_CHAR, ['E'] = ID_CHAR, ['F'] = ID_CHAR,
	['G'] = ID_CHAR, ['H'] = ID_CHAR, ['I'] = ID_CHAR, ['J'] = ID_CHAR, ['K'] = ID_CHAR, ['L'] = ID_CHAR,
	['M'] = ID_CHAR, ['N'] = ID_CHAR, ['O'] = ID_CHAR, ['P'] = ID_CHAR, ['Q'] = ID_CHAR, ['R'] = ID_CHAR,
	['S'] = ID_CHAR, ['T'] = ID_CHAR, ['U'] = ID_CHAR, ['V'] = ID_CHAR, ['W'] = ID_CHAR, ['X'] = ID_CHAR,
	['Y'] = ID_CHAR, ['Z'] = ID_CHAR,
	['0'] = ID_CHAR, ['1'] = ID_CHAR, ['2'] = ID_CHAR, ['3'] = ID_CHAR, ['4'] = ID_CHAR, ['5'] = ID_CHAR,
	['6'] = ID_CHAR, ['7'] = ID_CHAR, ['8'] = ID_CHAR, ['9'] = ID_CHAR,
	['_'] = ID_CHAR, ['.'] = ID_CHAR, ['@'] = ID_CHAR, ['-'] = ID_CHAR, [':'] = ID_COLON,
};

static bool valid_chars(const char *s, size_t len, unsigned char allowed)
{
	if(!s || len == 0 || len > CHAT_ID_MAX) return false;
	for(size_t i = 0; i < len; i++){
		if(!(id_class[(unsigned char)s[i]] & allowed)) return false;
	}
	return true;
}

bool json__valid_id(const char *s, size_t len)
{
	return valid_chars(s, len, ID_CHAR);
}

bool json__valid_cmid(const char *s, size_t len)
{
	return valid_chars(s, len, ID_CHAR | ID_COLON);
}

/* Strict UTF-8 (RFC 3629): no overlongs, no surrogates, nothing past
 * U+10FFFF. NUL bytes are refused too: no client text needs them and they
 * would cut C strings short. */
bool json__valid_utf8(const unsigned char *s, size_t len)
{
	size_t i = 0;
	while(i < len){
		unsigned char c = s[i];
		size_t n;
		uint32_t cp;
		/* eight ASCII bytes, none of them NUL, at a time */
		while(len - i >= 8){
			uint64_t w;
			memcpy(&w, s + i, 8);
			if((w & 0x8080808080808080ULL) || ((w - 0x0101010101010101ULL) & ~w & 0x8080808080808080ULL)) break;
			i += 8;
		}
		if(i == len) break;
		c = s[i];
		if(c == 0) return false;
		if(c < 0x80){
			i++;
			continue;
		}else if(c >= 0xC2 && c <= 0xDF){
			n = 1; cp = c & 0x1F;
		}else if(c >= 0xE0 && c <= 0xEF){
			n = 2; cp = c & 0x0F;
		}else if(c >= 0xF0 && c <= 0xF4){
			n = 3; cp = c & 0x07;
		}else{
			return false;
		}
		if(len - i <= n) return false;
		for(size_t k = 1; k <= n; k++){
			if((s[i + k] & 0xC0) != 0x80) return false;
			cp = (cp << 6) | (s[i + k] & 0x3F);
		}
		if((n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) || cp > 0x10FFFF
				|| (cp >= 0xD800 && cp <= 0xDFFF)){
			return false;
		}
		i += n + 1;
	}
	return true;
}

/* ====================================================================== *
 * Parsing client payloads
 * ====================================================================== */

/* True if the JSON text holds the escape \u0000, which cJSON would decode into
 * a NUL that silently cuts the string short. A backslash preceded by an odd
 * run of backslashes is itself escaped, so only an even run counts. */
static bool has_nul_escape(const char *s, size_t len)
{
	const char *b = s;
	while(len >= 6 && (b = memchr(b, '\\', len - (size_t)(b - s) - 5)) != NULL){
		size_t i = (size_t)(b++ - s);
		if(!memcmp(s + i + 1, "u0000", 5)){
			size_t run = 0;
			while(run < i && s[i - 1 - run] == '\\') run++;
			if(run % 2 == 0) return true;
		}
	}
	return false;
}

enum chat_err json__parse_object(const void *payload, size_t len, size_t max, cJSON **out, struct chat_error *e)
{
	cJSON *root;
	const char *end = NULL;

	*out = NULL;
	if(len > max){
		return chat__fail(e, CHAT_E_TOO_LARGE, "payload is %zu bytes, the limit is %zu", len, max);
	}
	if(len == 0){
		return chat__fail(e, CHAT_E_INVALID_JSON, "empty payload: a JSON object is required");
	}
	if(!json__valid_utf8(payload, len)){
		return chat__fail(e, CHAT_E_INVALID_UTF8, "payload is not valid UTF-8");
	}
	if(has_nul_escape(payload, len)){
		return chat__fail(e, CHAT_E_INVALID_UTF8, "payload contains an escaped NUL character (\\u0000)");
	}
	root = cJSON_ParseWithLengthOpts(payload, len, &end, false);
	if(!root){
		return chat__fail(e, CHAT_E_INVALID_JSON, "payload is not valid JSON");
	}
	/* one JSON value and nothing after it but whitespace */
	for(const char *p = end; p < (const char *)payload + len; p++){
		if(*p != ' ' && *p != '\t' && *p != '\r' && *p != '\n'){
			cJSON_Delete(root);
			return chat__fail(e, CHAT_E_INVALID_JSON, "payload has bytes after its JSON value");
		}
	}
	if(!cJSON_IsObject(root)){
		cJSON_Delete(root);
		return chat__fail(e, CHAT_E_INVALID_JSON, "payload must be a JSON object");
	}
	*out = root;
	return CHAT_E_OK;
}

enum chat_err json__only_fields(const cJSON *obj, const char *const *allowed, struct chat_error *e)
{
	const cJSON *it;
	cJSON_ArrayForEach(it, obj){
		bool ok = false;
		for(const char *const *a = allowed; *a; a++){
			if(it->string && !strcmp(it->string, *a)){
				ok = true;
				break;
			}
		}
		if(!ok){
			return chat__fail(e, CHAT_E_UNKNOWN_FIELD, "unknown field '%.64s'", it->string ? it->string : "");
		}
	}
	/* cJSON keeps duplicate keys; the first would win silently. Refuse them. */
	for(it = obj->child; it; it = it->next){
		for(const cJSON *o = it->next; o; o = o->next){
			if(it->string && o->string && !strcmp(it->string, o->string)){
				return chat__fail(e, CHAT_E_INVALID_FIELD, "field '%.64s' appears twice", it->string);
			}
		}
	}
	return CHAT_E_OK;
}

enum chat_err json__opt_int(const cJSON *obj, const char *name, int64_t min, int64_t max,
		int64_t *out, bool *present, struct chat_error *e)
{
	const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, name);
	double d;

	*present = false;
	if(!it) return CHAT_E_OK;
	if(!cJSON_IsNumber(it)){   /* null too: absent is how a value is left out */
		return chat__fail(e, CHAT_E_INVALID_FIELD, "'%s' must be an integer", name);
	}
	d = it->valuedouble;
	/* the range first: casting NaN, 1e999 or anything past int64_t is undefined */
	if(!(d >= (double)min && d <= (double)max && d >= -0x1p63 && d < 0x1p63) || d != (double)(int64_t)d){
		return chat__fail(e, CHAT_E_INVALID_FIELD, "'%s' must be an integer in %lld..%lld",
				name, (long long)min, (long long)max);
	}
	*out = (int64_t)d;
	*present = true;
	return CHAT_E_OK;
}

enum chat_err json__req_id(const cJSON *obj, const char *name, const char **out, struct chat_error *e)
{
	const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, name);
	if(!it){
		return chat__fail(e, CHAT_E_INVALID_FIELD, "'%s' is required", name);
	}
	if(!cJSON_IsString(it)){
		return chat__fail(e, CHAT_E_INVALID_FIELD, "'%s' must be a string", name);
	}
	if(!json__valid_id(it->valuestring, strlen(it->valuestring))){
		return chat__fail(e, CHAT_E_INVALID_ID, "'%s' is not a valid id (1-64 of A-Z a-z 0-9 _ . @ -)", name);
	}
	*out = it->valuestring;
	return CHAT_E_OK;
}

char *json__print(const cJSON *obj, size_t *len)
{
	char *s = cJSON_PrintUnformatted(obj);
	if(s && len) *len = strlen(s);
	return s;
}

/* ====================================================================== *
 * Writing JSON without a tree
 * ====================================================================== */

/* How many bytes each byte takes in a JSON string the way cJSON prints it:
 * " and \ and \b \f \n \r \t two, other controls six (\u00XX), the rest
 * (UTF-8 included) one. */
static const unsigned char esc_len[256] = {
	6, 6, 6, 6, 6, 6, 6, 6, 2, 2, 2, 6, 2, 2, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6,
	1, 1, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
	1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 1, 1, 1,
	1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
	1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
	1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
	1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
	1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
};

/* The length of the run of bytes at the start of s (n bytes) that stand for
 * themselves in a JSON string (esc_len 1: not ", \ or a control byte). Eight
 * bytes at a time: a word holds one of those if one of its bytes is below
 * 0x20 or becomes zero when xor'ed with '"' or '\\' (the "has a byte less
 * than" test, exact as to whether any byte matched, and on a little-endian
 * machine its lowest mark is the first match). */
static size_t plain_run(const unsigned char *s, size_t n)
{
	const uint64_t ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
	const uint64_t quotes = ones * '"', backslashes = ones * '\\', controls = ones * 0x20;
	size_t i = 0;

	for(; n - i >= 8; i += 8){
		uint64_t w, q, b, hit;
		memcpy(&w, s + i, 8);
		q = w ^ quotes;
		b = w ^ backslashes;
		hit = (((w - controls) & ~w) | ((q - ones) & ~q) | ((b - ones) & ~b)) & highs;
		if(hit){
#if defined(__GNUC__) && defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
			/* a borrow only marks bytes after a true match: the lowest mark is one */
			return i + (size_t)__builtin_ctzll(hit) / 8;
#else
			break;
#endif
		}
	}
	while(i < n && esc_len[s[i]] == 1) i++;
	return i;
}

/* Bytes json__put_str writes for s, quotes included. */
size_t json__str_len(const char *s)
{
	const unsigned char *u = (const unsigned char *)s;
	size_t len = strlen(s), n = 2 + len;

	for(size_t i = plain_run(u, len); i < len; i += 1 + plain_run(u + i + 1, len - i - 1)){
		n += esc_len[u[i]] - 1u;
	}
	return n;
}

/* Writes s as a JSON string at dst (json__str_len(s) bytes, no NUL), the
 * bytes cJSON would print; returns the end. */
char *json__put_str(char *dst, const char *s)
{
	static const char hex[] = "0123456789abcdef";
	const unsigned char *p = (const unsigned char *)s, *end = p + strlen(s);

	*dst++ = '"';
	for(;;){
		size_t run = plain_run(p, (size_t)(end - p));
		memcpy(dst, p, run);
		dst += run;
		p += run;
		if(p == end) break;
		*dst++ = '\\';
		switch(*p){
			case '"': *dst++ = '"'; break;
			case '\\': *dst++ = '\\'; break;
			case '\b': *dst++ = 'b'; break;
			case '\f': *dst++ = 'f'; break;
			case '\n': *dst++ = 'n'; break;
			case '\r': *dst++ = 'r'; break;
			case '\t': *dst++ = 't'; break;
			default:
				memcpy(dst, "u00", 3);
				dst[3] = hex[*p >> 4];
				dst[4] = hex[*p & 0xf];
				dst += 5;
		}
		p++;
	}
	*dst++ = '"';
	return dst;
}

/* Writes the n bytes of s as a JSON string at dst (n + 2 bytes) when the
 * caller knows none of them needs escaping (a json_flat's plain string, an
 * id); returns the end. */
char *json__put_plain(char *dst, const char *s, size_t n)
{
	*dst++ = '"';
	memcpy(dst, s, n);
	dst[n] = '"';
	return dst + n + 1;
}

/* Writes v in decimal at dst (at most 20 bytes, no NUL); returns the end. */
char *json__put_u64(char *dst, uint64_t v)
{
	/* two digits per division: a timestamp takes 7 rather than 13 */
	static const char pairs[] =
		"00010203040506070809101112131415161718192021222324252627282930313233343536373839"
		"40414243444546474849505152535455565758596061626364656667686970717273747576777879"
		"8081828384858687888990919293949596979899";
	uint64_t t = v;
	size_t n = 1;
	char *p;

	for(; t >= 100; t /= 100) n += 2;   /* counting the digits too */
	if(t >= 10) n++;
	p = dst + n;
	for(; v >= 100; v /= 100){
		p -= 2;
		memcpy(p, pairs + 2 * (v % 100), 2);
	}
	if(v >= 10) memcpy(p - 2, pairs + 2 * v, 2);
	else p[-1] = (char)('0' + v);
	return dst + n;
}

/* Writes the n bytes of s at dst; returns the end. */
char *json__put_raw(char *dst, const char *s, size_t n)
{
	memcpy(dst, s, n);
	return dst + n;
}

/* ====================================================================== *
 * Reading a flat object without a tree
 * ====================================================================== */

static const char *skip_ws(const char *p, const char *end)
{
	while(p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
	return p;
}

/* A string at p (just past its opening quote) decoded into *out; escapes
 * other than \uXXXX only, no control bytes. *plain tells whether every
 * decoded byte stands for itself in JSON (esc_len 1), so that it prints as
 * '"' + bytes + '"'. Returns the byte after the closing quote, or NULL. */
static const char *flat_string(const char *p, const char *end, char **out, bool *plain)
{
	char *o = *out;
	*plain = true;
	while(p < end){
		/* a run of bytes that stand for themselves, copied at once */
		size_t run = plain_run((const unsigned char *)p, (size_t)(end - p));
		unsigned char c;
		memcpy(o, p, run);
		o += run;
		p += run;
		if(p == end) break;
		c = (unsigned char)*p++;
		if(c == '"'){
			*o++ = '\0';
			*out = o;
			return p;
		}
		if(c < 0x20) return NULL;
		if(c == '\\'){
			if(p == end) return NULL;
			switch(*p++){
				case '"': c = '"'; break;
				case '\\': c = '\\'; break;
				case '/': c = '/'; break;
				case 'b': c = '\b'; break;
				case 'f': c = '\f'; break;
				case 'n': c = '\n'; break;
				case 'r': c = '\r'; break;
				case 't': c = '\t'; break;
				default: return NULL;   /* \u and anything else: the general path */
			}
			if(esc_len[c] != 1) *plain = false;
		}
		*o++ = (char)c;
	}
	return NULL;
}

bool json__flat_parse(const char *p, size_t len, struct json_flat *f, size_t nf, char *scratch)
{
	const char *end = p + len;
	char *o = scratch;

	for(size_t i = 0; i < nf; i++) f[i].present = false;
	p = skip_ws(p, end);
	if(p == end || *p++ != '{') return false;
	p = skip_ws(p, end);
	if(p < end && *p == '}'){
		p++;
	}else for(;;){
		const char *name;
		struct json_flat *it = NULL;
		bool plain;

		if(p == end || *p++ != '"') return false;
		name = o;
		if(!(p = flat_string(p, end, &o, &plain))) return false;
		for(size_t i = 0; i < nf; i++){
			if(!strcmp(f[i].name, name)) it = &f[i];
		}
		if(!it || it->present) return false;   /* unknown or repeated: the general path says which */
		it->present = true;
		p = skip_ws(p, end);
		if(p == end || *p++ != ':') return false;
		p = skip_ws(p, end);
		if(p == end) return false;
		if(*p == '"'){
			if(!it->string) return false;
			it->str = o;
			if(!(p = flat_string(p + 1, end, &o, &it->plain))) return false;
			it->len = (size_t)(o - it->str - 1);
		}else{
			/* 1..15 digits, no leading zero: exact as a double too */
			const char *d = p;
			if(it->string || *p < '1' || *p > '9') return false;
			it->num = 0;
			while(p < end && *p >= '0' && *p <= '9') it->num = it->num * 10 + (uint64_t)(*p++ - '0');
			if(p - d > 15 || (p < end && (*p == '.' || *p == 'e' || *p == 'E'))) return false;
		}
		p = skip_ws(p, end);
		if(p == end) return false;
		if(*p == '}'){
			p++;
			break;
		}
		if(*p++ != ',') return false;
		p = skip_ws(p, end);
	}
	return skip_ws(p, end) == end;
}
