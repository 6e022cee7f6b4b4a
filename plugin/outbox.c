/*
 * outbox.c — the publishes a handler asks for, in order. The core fills it;
 * the adapter (plugin.c) turns each entry into mosquitto_broker_publish after
 * the handler returns, and clears it. A handler whose commit fails clears it
 * itself, so nothing is ever published for data that was not stored.
 */
#include <stdlib.h>
#include <string.h>

#include "chat.h"

void outbox__init(struct chat_outbox *ob)
{
	ob->head = NULL;
	ob->tail = &ob->head;
	ob->last = NULL;
	ob->count = 0;
}

/* One allocation per entry: the topic lives right after the struct. */
int outbox__add_owned(struct chat_outbox *ob, const char *topic, char *payload, size_t len,
		void (*free_payload)(void *), enum outbox_target target, bool correlate)
{
	size_t tl = strlen(topic);
	struct outbox_pub *p = malloc(sizeof(*p) + tl + 1);
	if(!p){
		free_payload(payload);
		return -1;
	}
	memset(p, 0, sizeof(*p));
	p->topic = (char *)(p + 1);
	memcpy(p->topic, topic, tl + 1);
	p->payload = payload;
	p->free_payload = free_payload;
	p->len = len;
	p->target = target;
	p->correlate = correlate;
	p->qos = 1;
	*ob->tail = p;
	ob->last = p;
	ob->tail = &p->next;
	ob->count++;
	return 0;
}

int outbox__add(struct chat_outbox *ob, const char *topic, char *payload, size_t len,
		enum outbox_target target, bool correlate)
{
	return outbox__add_owned(ob, topic, payload, len, free, target, correlate);
}

int outbox__add_json(struct chat_outbox *ob, const char *topic, const cJSON *obj,
		enum outbox_target target, bool correlate)
{
	size_t len;
	char *s = json__print(obj, &len);
	if(!s) return -1;
	return outbox__add(ob, topic, s, len, target, correlate);
}

void outbox__append(struct chat_outbox *ob, struct chat_outbox *from)
{
	if(!from->head) return;
	*ob->tail = from->head;
	ob->tail = from->tail;
	ob->last = from->last;
	ob->count += from->count;
	outbox__init(from);
}

void outbox__clear(struct chat_outbox *ob)
{
	struct outbox_pub *p = ob->head, *next;
	while(p){
		next = p->next;
		if(p->payload) p->free_payload(p->payload);
		free(p);
		p = next;
	}
	outbox__init(ob);
}
