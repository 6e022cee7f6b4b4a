/* libFuzzer target: json.c's readers of client payloads — json__parse_object
 * (size, UTF-8, escaped NUL, one JSON object and nothing after it), then
 * json__only_fields, json__opt_int and json__req_id on what it accepted, and a
 * print/re-parse round trip (stored messages and push jobs are printed by the
 * core and parsed again later). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_PAYLOAD 4096

static void fail(const char *what)
{
	fprintf(stderr, "fuzz_json: %s\n", what);
	abort();
}

static void check_accepted(const uint8_t *data, size_t size, cJSON *root)
{
	static const char *const allowed[] = {"op", "req_id", "conv", "cmid", "body", "type", "reply_to", "state",
		"delivered", "read", "users", "limit", NULL};
	struct chat_error e = {0};
	const char *id;
	int64_t v;
	bool present;
	char *s;
	size_t len;
	cJSON *again = NULL;

	if(size > MAX_PAYLOAD || !json__valid_utf8(data, size) || !cJSON_IsObject(root)) fail("accepted a bad payload");
	json__only_fields(root, allowed, &e);
	if(json__opt_int(root, "reply_to", 1, INT64_MAX / 2, &v, &present, &e) == CHAT_E_OK && present
			&& (v < 1 || v > INT64_MAX / 2)){
		fail("json__opt_int out of range");
	}
	if(json__opt_int(root, "limit", -3, 7, &v, &present, &e) == CHAT_E_OK && present && (v < -3 || v > 7)){
		fail("json__opt_int out of range");
	}
	if(json__req_id(root, "conv", &id, &e) == CHAT_E_OK && !json__valid_id(id, strlen(id))){
		fail("json__req_id returned an invalid id");
	}
	s = json__print(root, &len);
	if(s){
		if(strlen(s) != len) fail("json__print length");
		if(json__parse_object(s, len, SIZE_MAX, &again, &e) != CHAT_E_OK){
			fprintf(stderr, "printed: %s\nerror: %s\n", s, e.message);
			fail("a printed object does not parse again");
		}
		cJSON_Delete(again);
		cJSON_free(s);
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct chat_error e;
	cJSON *root = (cJSON *)1;
	enum chat_err rc;

	memset(&e, 0x55, sizeof(e));
	rc = json__parse_object(data, size, MAX_PAYLOAD, &root, &e);
	if(rc == CHAT_E_OK){
		if(!root) fail("ok without an object");
		check_accepted(data, size, root);
		cJSON_Delete(root);
	}else{
		if(root) fail("an error with an object");
		if(e.code != rc || !memchr(e.message, '\0', sizeof(e.message)) || !chat_err__code(rc)) fail("error");
	}
	return 0;
}
