/* ids, UTF-8 and payload parsing */
#include "chat.h"
#include "check.h"

int main(void)
{
	struct chat_error e;
	cJSON *o;
	char id64[65];

	CHECK(json__valid_id("alice", 5));
	CHECK(json__valid_id("a.b@c-d_e", 9));
	CHECK(!json__valid_id("", 0));
	CHECK(!json__valid_id("a/b", 3));
	CHECK(!json__valid_id("a+b", 3));
	CHECK(!json__valid_id("a b", 3));
	CHECK(!json__valid_id("a:b", 3));
	CHECK(json__valid_cmid("9f1c-2a:01", 10));
	memset(id64, 'x', 64); id64[64] = '\0';
	CHECK(json__valid_id(id64, 64));
	CHECK(!json__valid_id(id64, 65));

	CHECK(json__valid_utf8((const unsigned char *)"h\xc3\xa9llo", 6));
	CHECK(json__valid_utf8((const unsigned char *)"\xf0\x9f\x98\x80", 4));       /* U+1F600 */
	CHECK(!json__valid_utf8((const unsigned char *)"\xff", 1));
	CHECK(!json__valid_utf8((const unsigned char *)"\xc0\xaf", 2));              /* overlong '/' */
	CHECK(!json__valid_utf8((const unsigned char *)"\xed\xa0\x80", 3));          /* surrogate */
	CHECK(!json__valid_utf8((const unsigned char *)"\xf4\x90\x80\x80", 4));      /* > U+10FFFF */
	CHECK(!json__valid_utf8((const unsigned char *)"\xe2\x82", 2));              /* truncated */
	CHECK(!json__valid_utf8((const unsigned char *)"a\0b", 3));

	CHECK_EQ_INT(json__parse_object("{}", 2, 1, &o, &e), CHAT_E_TOO_LARGE);
	CHECK_EQ_INT(json__parse_object("[1]", 3, 100, &o, &e), CHAT_E_INVALID_JSON);
	CHECK_EQ_INT(json__parse_object("{\"a\":", 5, 100, &o, &e), CHAT_E_INVALID_JSON);
	CHECK_EQ_INT(json__parse_object("\xff", 1, 100, &o, &e), CHAT_E_INVALID_UTF8);
	CHECK_EQ_INT(json__parse_object("{\"a\":\"x\\u0000y\"}", 16, 100, &o, &e), CHAT_E_INVALID_UTF8);
	CHECK_EQ_INT(json__parse_object("{\"a\":\"x\\\\u0000y\"}", 17, 100, &o, &e), CHAT_E_OK);
	cJSON_Delete(o);
	CHECK_EQ_INT(json__parse_object("{\"a\":1}", 7, 100, &o, &e), CHAT_E_OK);
	CHECK(o && cJSON_IsObject(o));

	{
		static const char *const allowed[] = {"a", NULL};
		int64_t v; bool present;
		CHECK_EQ_INT(json__only_fields(o, allowed, &e), CHAT_E_OK);
		CHECK_EQ_INT(json__opt_int(o, "a", 1, 5, &v, &present, &e), CHAT_E_OK);
		CHECK(present && v == 1);
		CHECK_EQ_INT(json__opt_int(o, "a", 2, 5, &v, &present, &e), CHAT_E_INVALID_FIELD);
		CHECK_EQ_INT(json__opt_int(o, "b", 2, 5, &v, &present, &e), CHAT_E_OK);
		CHECK(!present);
	}
	cJSON_Delete(o);
	CHECK_EQ_INT(json__parse_object("{\"a\":1,\"a\":2}", 13, 100, &o, &e), CHAT_E_OK);
	{
		static const char *const allowed[] = {"a", NULL};
		static const char *const none[] = {NULL};
		CHECK_EQ_INT(json__only_fields(o, allowed, &e), CHAT_E_INVALID_FIELD);   /* duplicate key */
		CHECK_EQ_INT(json__only_fields(o, none, &e), CHAT_E_UNKNOWN_FIELD);
	}
	cJSON_Delete(o);
	CHECK_EQ_STR(chat_err__code(CHAT_E_NOT_MEMBER), "not_member");
	CHECK_DONE();
}
