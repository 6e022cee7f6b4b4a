/*
 * config.c — plugin_opt_* options: defaults, strict parsing, cleanup.
 *
 * A bad value is an error that stops the broker at start, never a silent
 * default: every number is parsed with strtoull and checked for trailing
 * garbage and range.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "chat.h"

void config__defaults(struct chat_config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->map_size = (size_t)4 << 30;        /* 4 GiB of address space; the file grows as used */
	cfg->fsync = CHAT_FSYNC_OFF;
	cfg->sync_interval_ms = 1000;
	cfg->journal = -1;
	cfg->commit_interval_ms = CHAT_COMMIT_DEFAULT;
	strcpy(cfg->prefix, "chat");
	cfg->prefix_len = 4;
	cfg->max_members = 500;
	cfg->max_body = 16 * 1024;
	cfg->max_payload = 64 * 1024;
	cfg->history_limit = 200;
	cfg->receipt_fanout_max = 50;
	cfg->typing_fanout_max = 50;
	cfg->typing_interval_ms = 2000;
	cfg->typing_ttl_ms = 6000;
	cfg->presence_grace_ms = 1500;
	cfg->push_window_ms = 2000;
	cfg->push_retry_ms = 30000;
	cfg->push_preview = true;
	cfg->push_max_devices = 10;
	jwt__config_defaults(&cfg->jwt);
	cfg->stats_interval_ms = 10000;
	cfg->max_conversations_per_user = 10000;
	cfg->max_name = CHAT_NAME_MAX;
	/* per user: 10 sends/s with bursts of 30; requests, receipts, typing alike */
	cfg->rate[CHAT_RATE_SEND] = 10;
	cfg->rate_burst[CHAT_RATE_SEND] = 30;
	cfg->rate[CHAT_RATE_REQUEST] = 20;
	cfg->rate_burst[CHAT_RATE_REQUEST] = 60;
	cfg->rate[CHAT_RATE_RECEIPT] = 20;
	cfg->rate_burst[CHAT_RATE_RECEIPT] = 100;
	cfg->rate[CHAT_RATE_TYPING] = 5;
	cfg->rate_burst[CHAT_RATE_TYPING] = 10;
	cfg->rate_disconnect_after = 100;   /* refusals in a row that drop a connection */
}

void config__free(struct chat_config *cfg)
{
	free(cfg->db_path);
	for(size_t i = 0; i < cfg->observer_count; i++){
		free(cfg->observers[i]);
	}
	for(size_t i = 0; i < cfg->push_user_count; i++){
		free(cfg->push_users[i]);
	}
	free(cfg->observers);
	free(cfg->push_users);
	cfg->db_path = NULL;
	cfg->observers = NULL;
	cfg->observer_count = 0;
	cfg->push_users = NULL;
	cfg->push_user_count = 0;
	jwt__config_free(&cfg->jwt);
}

bool config__is_observer(const struct chat_config *cfg, const char *user)
{
	if(!user) return false;
	for(size_t i = 0; i < cfg->observer_count; i++){
		if(!strcmp(cfg->observers[i], user)) return true;
	}
	return false;
}

/* Parses an unsigned decimal with an optional K/M/G/T suffix (powers of 1024)
 * when allow_suffix; rejects empty input, signs, garbage and overflow. */
static int parse_size(const char *s, bool allow_suffix, unsigned long long lo, unsigned long long hi,
		unsigned long long *out)
{
	char *end;
	unsigned long long v, mul = 1;

	if(!s || *s < '0' || *s > '9') return -1;
	errno = 0;
	v = strtoull(s, &end, 10);
	if(errno) return -1;
	if(*end && allow_suffix && end[1] == '\0'){
		switch(*end){
			case 'k': case 'K': mul = 1ULL << 10; break;
			case 'm': case 'M': mul = 1ULL << 20; break;
			case 'g': case 'G': mul = 1ULL << 30; break;
			case 't': case 'T': mul = 1ULL << 40; break;
			default: return -1;
		}
		end++;
	}
	if(*end) return -1;
	if(v > hi / mul) return -1;
	v *= mul;
	if(v < lo || v > hi) return -1;
	*out = v;
	return 0;
}

static int set_uint(unsigned *field, const char *key, const char *value, unsigned long long lo,
		unsigned long long hi, char *err, size_t errlen)
{
	unsigned long long v;
	if(parse_size(value, false, lo, hi, &v)){
		snprintf(err, errlen, "plugin_opt_%s: '%s' is not a whole number in %llu..%llu", key, value, lo, hi);
		return -1;
	}
	*field = (unsigned)v;
	return 0;
}

/* Appends the comma/space separated user names of value to *list. */
static int set_user_list(char ***list, size_t *count, const char *key, const char *value, char *err, size_t errlen)
{
	char *copy = strdup(value), *save = NULL, *tok;
	int rc = 0;

	if(!copy){
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	for(tok = strtok_r(copy, ", ", &save); tok; tok = strtok_r(NULL, ", ", &save)){
		char **grown;
		if(!json__valid_id(tok, strlen(tok))){
			snprintf(err, errlen, "plugin_opt_%s: '%s' is not a valid user name "
					"(1-64 of A-Z a-z 0-9 _ . @ -)", key, tok);
			rc = -1;
			break;
		}
		grown = realloc(*list, (*count + 1) * sizeof(char *));
		if(!grown || !(grown[*count] = strdup(tok))){
			if(grown) *list = grown;
			snprintf(err, errlen, "out of memory");
			rc = -1;
			break;
		}
		*list = grown;
		(*count)++;
	}
	free(copy);
	return rc;
}

int config__set(struct chat_config *cfg, const char *key, const char *value, char *err, size_t errlen)
{
	unsigned long long v;

	if(!value) value = "";
	if(!strcasecmp(key, "db_path")){
		if(!*value){
			snprintf(err, errlen, "plugin_opt_db_path: empty path");
			return -1;
		}
		free(cfg->db_path);
		cfg->db_path = strdup(value);
		return cfg->db_path ? 0 : -1;
	}else if(!strcasecmp(key, "map_size")){
		if(parse_size(value, true, 1ULL << 20, (unsigned long long)SIZE_MAX, &v)){
			snprintf(err, errlen, "plugin_opt_map_size: '%s' is not a size of at least 1M "
					"(a number of bytes with an optional K, M, G or T suffix)", value);
			return -1;
		}
		cfg->map_size = (size_t)v;
		return 0;
	}else if(!strcasecmp(key, "fsync")){
		if(!strcasecmp(value, "off")){
			cfg->fsync = CHAT_FSYNC_OFF;
		}else if(!strcasecmp(value, "always")){
			cfg->fsync = CHAT_FSYNC_ALWAYS;
		}else{
			snprintf(err, errlen, "plugin_opt_fsync: '%s' is neither 'off' (survives a killed broker) "
					"nor 'always' (survives power loss)", value);
			return -1;
		}
		return 0;
	}else if(!strcasecmp(key, "sync_interval_ms")){
		return set_uint(&cfg->sync_interval_ms, key, value, 0, 3600 * 1000, err, errlen);
	}else if(!strcasecmp(key, "journal")){
		if(!strcasecmp(value, "on")){
			cfg->journal = 1;
		}else if(!strcasecmp(value, "off")){
			cfg->journal = 0;
		}else{
			snprintf(err, errlen, "plugin_opt_journal: '%s' is neither 'on' (acknowledge from the journal, "
					"commit the database in batches) nor 'off' (commit the database per write)", value);
			return -1;
		}
		return 0;
	}else if(!strcasecmp(key, "commit_interval_ms")){
		return set_uint(&cfg->commit_interval_ms, key, value, 0, 60 * 1000, err, errlen);
	}else if(!strcasecmp(key, "prefix")){
		if(!json__valid_id(value, strlen(value))){
			snprintf(err, errlen, "plugin_opt_prefix: '%s' must be 1-64 of A-Z a-z 0-9 _ . @ - "
					"(one topic level, no '/' or wildcards)", value);
			return -1;
		}
		strcpy(cfg->prefix, value);
		cfg->prefix_len = strlen(value);
		return 0;
	}else if(!strcasecmp(key, "max_members")){
		return set_uint(&cfg->max_members, key, value, 2, 100000, err, errlen);
	}else if(!strcasecmp(key, "max_body")){
		return set_uint(&cfg->max_body, key, value, 1, 16 * 1024 * 1024, err, errlen);
	}else if(!strcasecmp(key, "max_payload")){
		return set_uint(&cfg->max_payload, key, value, 256, 256 * 1024 * 1024, err, errlen);
	}else if(!strcasecmp(key, "history_limit")){
		return set_uint(&cfg->history_limit, key, value, 1, 10000, err, errlen);
	}else if(!strcasecmp(key, "receipt_fanout_max")){
		return set_uint(&cfg->receipt_fanout_max, key, value, 0, 100000, err, errlen);
	}else if(!strcasecmp(key, "typing_fanout_max")){
		return set_uint(&cfg->typing_fanout_max, key, value, 0, 100000, err, errlen);
	}else if(!strcasecmp(key, "typing_interval_ms")){
		return set_uint(&cfg->typing_interval_ms, key, value, 0, 60000, err, errlen);
	}else if(!strcasecmp(key, "typing_ttl_ms")){
		return set_uint(&cfg->typing_ttl_ms, key, value, 1000, 600000, err, errlen);
	}else if(!strcasecmp(key, "presence_grace_ms")){
		return set_uint(&cfg->presence_grace_ms, key, value, 0, 600000, err, errlen);
	}else if(!strcasecmp(key, "observers")){
		return set_user_list(&cfg->observers, &cfg->observer_count, key, value, err, errlen);
	}else if(!strcasecmp(key, "push_users")){
		return set_user_list(&cfg->push_users, &cfg->push_user_count, key, value, err, errlen);
	}else if(!strcasecmp(key, "push_window_ms")){
		return set_uint(&cfg->push_window_ms, key, value, 0, 3600 * 1000, err, errlen);
	}else if(!strcasecmp(key, "push_retry_ms")){
		return set_uint(&cfg->push_retry_ms, key, value, 1000, 24 * 3600 * 1000, err, errlen);
	}else if(!strcasecmp(key, "push_max_devices")){
		return set_uint(&cfg->push_max_devices, key, value, 1, 1000, err, errlen);
	}else if(!strcasecmp(key, "stats_interval_ms")){
		return set_uint(&cfg->stats_interval_ms, key, value, 0, 24 * 3600 * 1000, err, errlen);
	}else if(!strcasecmp(key, "push_preview")){
		if(!strcasecmp(value, "on")){
			cfg->push_preview = true;
		}else if(!strcasecmp(value, "off")){
			cfg->push_preview = false;
		}else{
			snprintf(err, errlen, "plugin_opt_push_preview: '%s' is neither 'on' nor 'off'", value);
			return -1;
		}
		return 0;
	}else if(!strcasecmp(key, "jwt_defer_users")){
		cfg->jwt.set_without_mode = true;
		return set_user_list(&cfg->jwt.defer_users, &cfg->jwt.defer_user_count, key, value, err, errlen);
	}else if(!strcasecmp(key, "auth") || !strncasecmp(key, "jwt_", 4)){
		return jwt__config_set(&cfg->jwt, key, value, err, errlen);
	}else if(!strcasecmp(key, "max_conversations_per_user")){
		return set_uint(&cfg->max_conversations_per_user, key, value, 1, 10000000, err, errlen);
	}else if(!strcasecmp(key, "max_name")){
		return set_uint(&cfg->max_name, key, value, 1, CHAT_NAME_MAX, err, errlen);
	}else if(!strcasecmp(key, "rate_disconnect_after")){
		return set_uint(&cfg->rate_disconnect_after, key, value, 0, 1000000, err, errlen);
	}
	for(int k = 0; k < CHAT_RATE_KINDS; k++){   /* rate_<kind> (0: unlimited), rate_<kind>_burst */
		char name[48];
		snprintf(name, sizeof(name), "rate_%s", ratelimit__kind_name(k));
		if(!strcasecmp(key, name)) return set_uint(&cfg->rate[k], key, value, 0, 1000000, err, errlen);
		snprintf(name, sizeof(name), "rate_%s_burst", ratelimit__kind_name(k));
		if(!strcasecmp(key, name)) return set_uint(&cfg->rate_burst[k], key, value, 1, 1000000, err, errlen);
	}
	snprintf(err, errlen, "unknown option plugin_opt_%s", key);
	return -1;
}
