/*
 * main.c — mosquitto-chat-bridge: command line, signals, the main loop and
 * the shutdown sequence.
 *
 *   mosquitto-chat-bridge -c /etc/mosquitto-chat/bridge.conf [-t] [-v]
 *
 * One thread. Each turn of the loop: (re)connect MQTT if due, start the
 * deliveries the concurrency allows, publish the status when due, then wait
 * in curl_multi_poll on curl's sockets plus two more: the MQTT socket and the
 * read end of a self-pipe the signal handler writes to. Then MQTT I/O, then
 * curl_multi_perform and the transfers that ended.
 *
 * SIGTERM/SIGINT: stop taking jobs (unsubscribe; jobs not started are left to
 * the plugin's re-send), finish the deliveries of started jobs and ack them
 * within shutdown_grace_ms, publish the final status, wait (briefly) for the
 * broker to confirm those publishes, disconnect. A job not acked by then is
 * sent again by the plugin: nothing is lost. A second signal cuts the grace
 * period short.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <mosquitto.h>

#include "bridge.h"

#define EXIT_CONFIG 78          /* sysexits EX_CONFIG: the unit does not restart on it */
#define LOOP_MAX_WAIT_MS 1000   /* keepalive and reconnect checks at least this often */
#define FLUSH_MAX_MS 3000       /* waiting for the broker's PUBACKs at exit */

/* The signal handler's only way to the loop: the write end of the self-pipe. */
static int signal_fd = -1;

static void on_signal(int sig)
{
	unsigned char c = (unsigned char)sig;
	int saved = errno;

	if(signal_fd >= 0 && write(signal_fd, &c, 1) < 0){
		/* pipe full: a signal is pending anyway */
	}
	errno = saved;
}

static int setup_signals(struct bridge *b)
{
	struct sigaction sa;

	if(pipe2(b->sigpipe, O_CLOEXEC | O_NONBLOCK)){
		log__printf(LOG_ERROR, "pipe: %s", strerror(errno));
		return -1;
	}
	signal_fd = b->sigpipe[1];
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigemptyset(&sa.sa_mask);
	sa.sa_flags = SA_RESTART;
	if(sigaction(SIGTERM, &sa, NULL) || sigaction(SIGINT, &sa, NULL)){
		log__printf(LOG_ERROR, "sigaction: %s", strerror(errno));
		return -1;
	}
	sa.sa_handler = SIG_IGN;
	if(sigaction(SIGPIPE, &sa, NULL)){
		log__printf(LOG_ERROR, "sigaction: %s", strerror(errno));
		return -1;
	}
	return 0;
}

static void drain_signals(struct bridge *b)
{
	unsigned char buf[16];

	while(read(b->sigpipe[0], buf, sizeof(buf)) > 0){
		if(b->stopping){
			log__printf(LOG_WARNING, "second signal: not waiting for deliveries in flight");
			b->grace_deadline = clock__mono_ms();
		}
		b->stop_requested = true;
	}
}

static void begin_stop(struct bridge *b, int64_t now)
{
	b->stopping = true;
	b->grace_deadline = now + b->cfg.shutdown_grace_ms;
	mqtt__stop_jobs(b);
	deliver__drop_unstarted(b);
	log__printf(LOG_INFO, "stopping: %zu job(s) in flight, grace period %ld ms", b->njobs, b->cfg.shutdown_grace_ms);
}

static int64_t min64(int64_t a, int64_t b)
{
	return a < b ? a : b;
}

/* Runs until stopped. Returns 0, or -1 on a fatal curl error. */
static int run(struct bridge *b)
{
	int64_t next_status = 0;

	for(;;){
		struct curl_waitfd fds[2];
		unsigned nfds = 0;
		int64_t now = clock__mono_ms(), wait;
		int mqtt_fd, mqtt_slot = -1;
		CURLMcode mc;

		if(b->stop_requested && !b->stopping) begin_stop(b, now);
		if(b->stopping){
			if(b->njobs == 0) break;
			if(now >= b->grace_deadline || !deliver__can_progress(b, b->grace_deadline)){
				deliver__abandon_all(b);
				break;
			}
		}
		mqtt__maintain(b, now);
		deliver__pump(b, now);
		if(now >= next_status){
			mqtt__status(b, "running");
			next_status = now + b->cfg.status_interval_ms;
		}

		wait = min64(LOOP_MAX_WAIT_MS, next_status - now);
		wait = deliver__next_due(b, now, wait);
		if(b->stopping) wait = min64(wait, b->grace_deadline - now);
		if(!b->mqtt_socket) wait = min64(wait, b->mqtt_next_attempt - now);
		if(wait < 0) wait = 0;

		fds[nfds].fd = b->sigpipe[0];
		fds[nfds].events = CURL_WAIT_POLLIN;
		fds[nfds++].revents = 0;
		mqtt_fd = mqtt__socket(b);
		if(mqtt_fd >= 0){
			mqtt_slot = (int)nfds;
			fds[nfds].fd = mqtt_fd;
			fds[nfds].events = CURL_WAIT_POLLIN | (mqtt__want_write(b) ? CURL_WAIT_POLLOUT : 0);
			fds[nfds++].revents = 0;
		}
		mc = curl_multi_poll(b->multi, fds, nfds, (int)wait, NULL);
		if(mc != CURLM_OK){
			log__printf(LOG_ERROR, "curl_multi_poll: %s", curl_multi_strerror(mc));
			return -1;
		}
		if(fds[0].revents) drain_signals(b);
		if(mqtt_slot >= 0){
			/* Always: loop_misc keeps the connection alive even without traffic. */
			mqtt__io(b, fds[mqtt_slot].revents & (CURL_WAIT_POLLIN | CURL_WAIT_POLLPRI),
					fds[mqtt_slot].revents & CURL_WAIT_POLLOUT);
		}
		if(http__perform(b)) return -1;
	}
	return 0;
}

/* Final status, then wait (bounded) for the broker to confirm the acks and
 * the status, then DISCONNECT. */
static void finish_mqtt(struct bridge *b)
{
	int64_t end = clock__mono_ms() + FLUSH_MAX_MS;

	mqtt__status(b, "stopped");
	while(mqtt__connected(b) && mqtt__unconfirmed(b) > 0 && clock__mono_ms() < end){
		struct pollfd p = {.fd = mqtt__socket(b), .events = POLLIN};
		if(p.fd < 0) break;
		if(mqtt__want_write(b)) p.events |= POLLOUT;
		if(poll(&p, 1, 100) < 0 && errno != EINTR) break;
		mqtt__io(b, p.revents & (POLLIN | POLLHUP | POLLERR), p.revents & POLLOUT);
	}
	if(mqtt__unconfirmed(b) > 0){
		log__printf(LOG_WARNING, "mqtt: %d publish(es) not confirmed by the broker at exit", mqtt__unconfirmed(b));
	}
	mqtt__disconnect(b);
}

static void usage(FILE *out)
{
	fprintf(out, "usage: %s -c CONFIG [-t] [-v]\n"
			"  -c CONFIG  the bridge's config file (key = value lines)\n"
			"  -t         check the config (and load the provider keys), then exit\n"
			"  -v         debug logging\n", BRIDGE_NAME);
}

int main(int argc, char **argv)
{
	struct bridge b;
	const char *path = NULL;
	char err[BRIDGE_ERR_MAX];
	bool check_only = false, curl_ok = false, mosq_ok = false;
	int opt, rc = EXIT_FAILURE;
	CURLcode cc;

	memset(&b, 0, sizeof(b));
	b.sigpipe[0] = b.sigpipe[1] = -1;
	while((opt = getopt(argc, argv, "c:tvh")) != -1){
		switch(opt){
			case 'c': path = optarg; break;
			case 't': check_only = true; break;
			case 'v': log__set_level(LOG_DEBUG); break;
			case 'h': usage(stdout); return 0;
			default: usage(stderr); return EXIT_CONFIG;
		}
	}
	if(!path || optind != argc){
		usage(stderr);
		return EXIT_CONFIG;
	}
	if(config__load(&b.cfg, path, err, sizeof(err))){
		fprintf(stderr, "%s: %s\n", BRIDGE_NAME, err);
		config__free(&b.cfg);
		return EXIT_CONFIG;
	}

	cc = curl_global_init(CURL_GLOBAL_DEFAULT);
	if(cc != CURLE_OK){
		log__printf(LOG_ERROR, "curl_global_init: %s", curl_easy_strerror(cc));
		goto out;
	}
	curl_ok = true;
	if(mosquitto_lib_init() != MOSQ_ERR_SUCCESS){
		log__printf(LOG_ERROR, "mosquitto_lib_init failed");
		goto out;
	}
	mosq_ok = true;
	b.rng = crypto__seed();
	b.acks.max = (size_t)b.cfg.ack_cache;
	b.started_wall_ms = clock__wall_ms();

	if(fcm__init(&b, err, sizeof(err)) || apns__init(&b, err, sizeof(err))){
		fprintf(stderr, "%s: %s\n", BRIDGE_NAME, err);
		rc = EXIT_CONFIG;
		goto out;
	}
	if(check_only){
		printf("%s: configuration OK\n", path);
		rc = 0;
		goto out;
	}
	if(http__init(&b) || mqtt__init(&b) || setup_signals(&b)) goto out;

	log__printf(LOG_INFO, "%s starting: fcm %s, apns %s, webhook %s; concurrency %ld, max_tries %ld",
			BRIDGE_NAME, b.cfg.fcm.enabled ? "on" : "off", b.cfg.apns.enabled ? "on" : "off",
			b.cfg.webhook.enabled ? "on" : "off", b.cfg.concurrency, b.cfg.max_tries);
	if(run(&b) == 0) rc = 0;
	else deliver__abandon_all(&b);
	finish_mqtt(&b);
	log__printf(LOG_INFO, "stopped: received %llu, acked %llu (delivered %llu, failed %llu, dead %llu), "
			"abandoned %llu", b.n.received, b.n.acked, b.n.jobs_delivered, b.n.jobs_failed, b.n.jobs_dead,
			b.n.abandoned);
out:
	fcm__cleanup(&b);
	apns__cleanup(&b);
	http__cleanup(&b);
	mqtt__cleanup(&b);
	ackcache__free(&b.acks);
	config__free(&b.cfg);
	signal_fd = -1;
	if(b.sigpipe[0] >= 0) close(b.sigpipe[0]);
	if(b.sigpipe[1] >= 0) close(b.sigpipe[1]);
	if(mosq_ok) mosquitto_lib_cleanup();
	if(curl_ok) curl_global_cleanup();
	return rc;
}
