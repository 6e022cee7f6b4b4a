/*
 * topic.c — the topic router: which chat topic (or filter) a string names.
 *
 *   {p}/send/{conv}  {p}/typing/{conv}  {p}/receipt/{conv}  {p}/req      inbound
 *   {p}/c/{conv}/{x}  {p}/u/{user}/{x…}  {p}/p/{user}                    outbound
 */
#include <stdio.h>
#include <string.h>

#include "chat.h"

/* Copies the level starting at s (up to '/' or the end) into ref->id when it
 * is a valid id; returns a pointer past the level (at '/' or '\0'). */
static const char *take_id(const char *s, struct topic_ref *ref)
{
	const char *end = strchr(s, '/');
	size_t len = end ? (size_t)(end - s) : strlen(s);

	if(len == 1 && (s[0] == '+' || s[0] == '#')){
		ref->kind = TOPIC_WILDCARD;
	}
	ref->id_valid = json__valid_id(s, len);
	if(ref->id_valid){
		memcpy(ref->id, s, len);
		ref->id[len] = '\0';
	}
	return s + len;
}

static bool level_is(const char *s, const char *word, const char **next)
{
	size_t n = strlen(word);
	if(strncmp(s, word, n) != 0) return false;
	if(s[n] != '/' && s[n] != '\0') return false;
	*next = s + n;
	return true;
}

void topic__parse(const struct chat_config *cfg, const char *topic, struct topic_ref *ref, bool *leading_wildcard)
{
	const char *p;

	memset(ref, 0, sizeof(*ref));
	ref->kind = TOPIC_OUTSIDE;
	if(leading_wildcard){
		*leading_wildcard = (topic[0] == '#' || (topic[0] == '+' && (topic[1] == '/' || topic[1] == '\0')));
	}
	if(strncmp(topic, cfg->prefix, cfg->prefix_len) != 0) return;
	p = topic + cfg->prefix_len;
	if(*p == '\0') return;            /* the bare prefix is not under it */
	if(*p != '/') return;
	p++;

	ref->kind = TOPIC_OTHER;
	if(p[0] == '#' || (p[0] == '+' && (p[1] == '/' || p[1] == '\0'))){
		ref->kind = TOPIC_WILDCARD;
		return;
	}

	const char *rest;
	enum topic_kind k;
	if(level_is(p, "send", &rest)) k = TOPIC_SEND;
	else if(level_is(p, "typing", &rest)) k = TOPIC_TYPING;
	else if(level_is(p, "receipt", &rest)) k = TOPIC_RECEIPT;
	else if(level_is(p, "c", &rest)) k = TOPIC_CONV_OUT;
	else if(level_is(p, "u", &rest)) k = TOPIC_USER_OUT;
	else if(level_is(p, "p", &rest)) k = TOPIC_PRESENCE;
	else if(level_is(p, "req", &rest)){
		if(*rest == '\0') ref->kind = TOPIC_REQ;
		return;
	}else if(level_is(p, "stats", &rest)){
		if(*rest == '\0') ref->kind = TOPIC_STATS;
		return;
	}else if(level_is(p, "push", &rest)){
		if(!strcmp(rest, "/jobs")) ref->kind = TOPIC_PUSH_JOBS;
		else if(!strcmp(rest, "/ack")) ref->kind = TOPIC_PUSH_ACK;
		else if(!strcmp(rest, "/status")) ref->kind = TOPIC_PUSH_STATUS;
		return;
	}else{
		return;
	}
	if(*rest != '/') return;          /* e.g. "chat/send" alone */
	rest++;
	ref->kind = k;
	rest = take_id(rest, ref);
	if(ref->kind == TOPIC_WILDCARD) return;

	switch(k){
		case TOPIC_SEND:
		case TOPIC_TYPING:
		case TOPIC_RECEIPT:
		case TOPIC_PRESENCE:
			/* exactly one level after the kind */
			if(*rest != '\0') ref->kind = TOPIC_OTHER;
			break;
		case TOPIC_CONV_OUT:
			/* exactly one more level: m, typing, receipt, or a wildcard */
			if(*rest != '/' || rest[1] == '\0' || strchr(rest + 1, '/')) ref->kind = TOPIC_OTHER;
			break;
		case TOPIC_USER_OUT:
			if(*rest != '/' || rest[1] == '\0') ref->kind = TOPIC_OTHER;
			break;
		default:
			break;
	}
}

char *topic__build(char *buf, size_t size, const struct chat_config *cfg, const char *a, const char *b, const char *c)
{
	int n;
	if(c){
		n = snprintf(buf, size, "%s/%s/%s/%s", cfg->prefix, a, b, c);
	}else if(b){
		n = snprintf(buf, size, "%s/%s/%s", cfg->prefix, a, b);
	}else{
		n = snprintf(buf, size, "%s/%s", cfg->prefix, a);
	}
	return (n < 0 || (size_t)n >= size) ? NULL : buf;
}
