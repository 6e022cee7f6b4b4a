/* libFuzzer target: the topic router (topic__parse) on any topic or
 * subscription filter, under two prefixes, with invariants on what it
 * reports; and topic__build -> topic__parse round trips for ids taken from
 * the input. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void fail(const char *what, const char *topic)
{
	fprintf(stderr, "fuzz_topic: %s: '%s'\n", what, topic);
	abort();
}

static void check_parse(const struct chat_config *cfg, const char *topic)
{
	struct topic_ref ref;
	bool lead;
	size_t pl = cfg->prefix_len;

	memset(&ref, 0x55, sizeof(ref));
	topic__parse(cfg, topic, &ref, &lead);
	if(ref.kind > TOPIC_OTHER) fail("kind out of range", topic);
	if(lead != (topic[0] == '#' || (topic[0] == '+' && (topic[1] == '/' || topic[1] == '\0')))){
		fail("leading wildcard", topic);
	}
	if(ref.kind == TOPIC_OUTSIDE){
		if(!strncmp(topic, cfg->prefix, pl) && topic[pl] == '/') fail("under the prefix but outside", topic);
		return;
	}
	if(strncmp(topic, cfg->prefix, pl) || topic[pl] != '/') fail("outside the prefix but classified", topic);
	if(ref.id_valid){
		size_t n = strnlen(ref.id, sizeof(ref.id));
		if(n == sizeof(ref.id) || !json__valid_id(ref.id, n)) fail("invalid id reported valid", topic);
		if(!strstr(topic, ref.id)) fail("id not in the topic", topic);
	}
	/* inbound kinds name exactly {prefix}/{kind}/{id} */
	const char *word = ref.kind == TOPIC_SEND ? "send" : ref.kind == TOPIC_TYPING ? "typing"
		: ref.kind == TOPIC_RECEIPT ? "receipt" : ref.kind == TOPIC_PRESENCE ? "p" : NULL;
	if(word){
		char want[CHAT_TOPIC_MAX * 2];
		if(!ref.id_valid) return;
		snprintf(want, sizeof(want), "%s/%s/%s", cfg->prefix, word, ref.id);
		if(strcmp(want, topic)) fail("inbound topic with more than its id", topic);
	}
	if(ref.kind == TOPIC_REQ){
		char want[CHAT_TOPIC_MAX];
		snprintf(want, sizeof(want), "%s/req", cfg->prefix);
		if(strcmp(want, topic)) fail("req topic", topic);
	}
}

/* Builds the topics of an id and checks the router reads them back. */
static void round_trip(const struct chat_config *cfg, const char *id)
{
	static const struct { const char *a; const char *c; enum topic_kind kind; } forms[] = {
		{"send", NULL, TOPIC_SEND}, {"typing", NULL, TOPIC_TYPING}, {"receipt", NULL, TOPIC_RECEIPT},
		{"p", NULL, TOPIC_PRESENCE}, {"c", "m", TOPIC_CONV_OUT}, {"u", "reply", TOPIC_USER_OUT},
	};
	char buf[CHAT_TOPIC_MAX];
	struct topic_ref ref;

	for(size_t i = 0; i < sizeof(forms) / sizeof(forms[0]); i++){
		if(!topic__build(buf, sizeof(buf), cfg, forms[i].a, id, forms[i].c)) fail("could not build", id);
		topic__parse(cfg, buf, &ref, NULL);
		if(ref.kind != forms[i].kind || !ref.id_valid || strcmp(ref.id, id)) fail("round trip", buf);
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct chat_config cfgs[2];
	static bool ready;
	char err[200];
	char *topic;

	if(!ready){
		config__defaults(&cfgs[0]);
		config__defaults(&cfgs[1]);
		if(config__set(&cfgs[1], "prefix", "a.b-c_d@e", err, sizeof(err))) fail(err, "");
		ready = true;
	}
	topic = malloc(size + 1);
	if(!topic) return 0;
	memcpy(topic, data, size);
	topic[size] = '\0';
	for(int i = 0; i < 2; i++){
		check_parse(&cfgs[i], topic);
		if(json__valid_id(topic, strlen(topic))) round_trip(&cfgs[i], topic);
		/* topic__build never overflows, whatever the buffer */
		if(size > 0){
			size_t cap = data[0] % 40 + 1;
			char *b = malloc(cap);
			const char *r = b ? topic__build(b, cap, &cfgs[i], "u", topic + 1, "x") : NULL;
			if(r && strlen(r) >= cap) fail("topic__build overflow", topic);
			free(b);
		}
	}
	free(topic);
	return 0;
}
