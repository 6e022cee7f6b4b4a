/*
 * log.c — log lines on stderr: "2025-11-23T15:55:00.123Z info <text>".
 *
 * systemd stores stderr in the journal; the timestamp keeps the lines useful
 * when the bridge runs in a terminal or under a test harness.
 */
#include <stdarg.h>
#include <stdio.h>
#include <time.h>

#include "bridge.h"

static enum log_level min_level = LOG_INFO;   /* process-wide, set once at start */

void log__set_level(enum log_level level)
{
	min_level = level;
}

void log__printf(enum log_level level, const char *fmt, ...)
{
	static const char *const names[] = {"debug", "info", "warning", "error"};
	char stamp[32], line[2048];
	struct tm tm;
	int64_t now;
	time_t secs;
	va_list ap;

	if(level < min_level) return;
	now = clock__wall_ms();
	secs = (time_t)(now / 1000);
	gmtime_r(&secs, &tm);
	strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%S", &tm);
	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	/* Job fields come from the network: no control character may forge a line. */
	for(char *p = line; *p; p++){
		if((unsigned char)*p < 0x20 || *p == 0x7f) *p = '?';
	}
	fprintf(stderr, "%s.%03dZ %s %s\n", stamp, (int)(now % 1000), names[level], line);
}
