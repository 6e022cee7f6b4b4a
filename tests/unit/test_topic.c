/* the topic router */
#include "chat.h"
#include "check.h"

static enum topic_kind kind_of(const struct chat_config *cfg, const char *t, bool *valid, char *id)
{
	struct topic_ref r;
	bool lw;
	topic__parse(cfg, t, &r, &lw);
	if(valid) *valid = r.id_valid;
	if(id) strcpy(id, r.id);
	return r.kind;
}

int main(void)
{
	struct chat_config cfg;
	bool valid, lw;
	char id[65];
	struct topic_ref r;

	config__defaults(&cfg);
	CHECK_EQ_INT(kind_of(&cfg, "chat/send/g_1", &valid, id), TOPIC_SEND);
	CHECK(valid); CHECK_EQ_STR(id, "g_1");
	CHECK_EQ_INT(kind_of(&cfg, "chat/send/a*b", &valid, NULL), TOPIC_SEND);
	CHECK(!valid);
	CHECK_EQ_INT(kind_of(&cfg, "chat/send/g_1/x", NULL, NULL), TOPIC_OTHER);
	CHECK_EQ_INT(kind_of(&cfg, "chat/send", NULL, NULL), TOPIC_OTHER);
	CHECK_EQ_INT(kind_of(&cfg, "chat/typing/g", NULL, NULL), TOPIC_TYPING);
	CHECK_EQ_INT(kind_of(&cfg, "chat/receipt/g", NULL, NULL), TOPIC_RECEIPT);
	CHECK_EQ_INT(kind_of(&cfg, "chat/req", NULL, NULL), TOPIC_REQ);
	CHECK_EQ_INT(kind_of(&cfg, "chat/req/x", NULL, NULL), TOPIC_OTHER);
	CHECK_EQ_INT(kind_of(&cfg, "chat/c/g/m", &valid, id), TOPIC_CONV_OUT);
	CHECK_EQ_STR(id, "g");
	CHECK_EQ_INT(kind_of(&cfg, "chat/c/g/+", NULL, NULL), TOPIC_CONV_OUT);
	CHECK_EQ_INT(kind_of(&cfg, "chat/c/g/#", NULL, NULL), TOPIC_CONV_OUT);
	CHECK_EQ_INT(kind_of(&cfg, "chat/c/g", NULL, NULL), TOPIC_OTHER);
	CHECK_EQ_INT(kind_of(&cfg, "chat/c/g/m/x", NULL, NULL), TOPIC_OTHER);
	CHECK_EQ_INT(kind_of(&cfg, "chat/c/+/m", NULL, NULL), TOPIC_WILDCARD);
	CHECK_EQ_INT(kind_of(&cfg, "chat/#", NULL, NULL), TOPIC_WILDCARD);
	CHECK_EQ_INT(kind_of(&cfg, "chat/+/x", NULL, NULL), TOPIC_WILDCARD);
	CHECK_EQ_INT(kind_of(&cfg, "chat/u/bob/event", &valid, id), TOPIC_USER_OUT);
	CHECK_EQ_STR(id, "bob");
	CHECK_EQ_INT(kind_of(&cfg, "chat/u/bob/x/y", NULL, NULL), TOPIC_USER_OUT);
	CHECK_EQ_INT(kind_of(&cfg, "chat/u/bob", NULL, NULL), TOPIC_OTHER);
	CHECK_EQ_INT(kind_of(&cfg, "chat/p/bob", NULL, NULL), TOPIC_PRESENCE);
	CHECK_EQ_INT(kind_of(&cfg, "chat/p/bob/x", NULL, NULL), TOPIC_OTHER);
	CHECK_EQ_INT(kind_of(&cfg, "chatter/send/g", NULL, NULL), TOPIC_OUTSIDE);
	CHECK_EQ_INT(kind_of(&cfg, "chat", NULL, NULL), TOPIC_OUTSIDE);
	CHECK_EQ_INT(kind_of(&cfg, "other/chat/send/g", NULL, NULL), TOPIC_OUTSIDE);
	CHECK_EQ_INT(kind_of(&cfg, "chat/zzz", NULL, NULL), TOPIC_OTHER);

	topic__parse(&cfg, "#", &r, &lw);
	CHECK(r.kind == TOPIC_OUTSIDE && lw);
	topic__parse(&cfg, "+/c/g/m", &r, &lw);
	CHECK(r.kind == TOPIC_OUTSIDE && lw);
	topic__parse(&cfg, "+x/y", &r, &lw);
	CHECK(!lw);

	{
		char err[200];
		CHECK_EQ_INT(config__set(&cfg, "prefix", "t1", err, sizeof(err)), 0);
		CHECK_EQ_INT(kind_of(&cfg, "t1/send/g", NULL, NULL), TOPIC_SEND);
		CHECK_EQ_INT(kind_of(&cfg, "chat/send/g", NULL, NULL), TOPIC_OUTSIDE);
		CHECK_EQ_INT(config__set(&cfg, "prefix", "a/b", err, sizeof(err)), -1);
		CHECK_EQ_INT(config__set(&cfg, "max_members", "12x", err, sizeof(err)), -1);
		CHECK_EQ_INT(config__set(&cfg, "max_members", "-3", err, sizeof(err)), -1);
		CHECK_EQ_INT(config__set(&cfg, "max_members", "", err, sizeof(err)), -1);
		CHECK_EQ_INT(config__set(&cfg, "max_members", "20", err, sizeof(err)), 0);
		CHECK_EQ_INT(cfg.max_members, 20);
		CHECK_EQ_INT(config__set(&cfg, "map_size", "64M", err, sizeof(err)), 0);
		CHECK_EQ_INT(cfg.map_size, 64u << 20);
		CHECK_EQ_INT(config__set(&cfg, "map_size", "64Q", err, sizeof(err)), -1);
		CHECK_EQ_INT(config__set(&cfg, "fsync", "sometimes", err, sizeof(err)), -1);
		CHECK_EQ_INT(config__set(&cfg, "fsync", "always", err, sizeof(err)), 0);
		CHECK_EQ_INT(config__set(&cfg, "observers", "mon, ops", err, sizeof(err)), 0);
		CHECK(config__is_observer(&cfg, "ops") && !config__is_observer(&cfg, "op"));
		CHECK_EQ_INT(config__set(&cfg, "observers", "bad/name", err, sizeof(err)), -1);
		CHECK_EQ_INT(config__set(&cfg, "nope", "1", err, sizeof(err)), -1);
		CHECK(strstr(err, "plugin_opt_nope") != NULL);
	}
	config__free(&cfg);
	CHECK_DONE();
}
