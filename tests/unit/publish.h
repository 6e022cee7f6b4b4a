/* publish.h — one publish through the core, as the broker adapter makes it,
 * for the unit tests that drive chat__handle_publish directly. */
#ifndef CHAT_TEST_PUBLISH_H
#define CHAT_TEST_PUBLISH_H

#include <stdlib.h>
#include <string.h>

#include "chat.h"

/* Publishes payload on topic as client c; returns the verdict. *first gets
 * the first queued publish whose topic ends with suffix, parsed (NULL if
 * none); the rest of the outbox is dropped. */
static inline enum chat_verdict publish_through_core(struct chat *chat, const struct chat_client *c,
		const char *topic, const char *payload, const char *suffix, cJSON **first)
{
	struct chat_outbox out;
	struct chat_rewrite rw = {0};
	enum chat_verdict v;
	size_t sl = strlen(suffix);

	outbox__init(&out);
	v = chat__handle_publish(chat, c, topic, payload, strlen(payload), &out, &rw);
	free(rw.payload);
	*first = NULL;
	for(struct outbox_pub *p = out.head; p; p = p->next){
		size_t tl = strlen(p->topic);
		if(tl >= sl && !strcmp(p->topic + tl - sl, suffix)){
			*first = cJSON_ParseWithLength(p->payload, p->len);
			break;
		}
	}
	outbox__clear(&out);
	return v;
}

#endif
