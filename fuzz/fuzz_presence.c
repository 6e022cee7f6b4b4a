/* libFuzzer target: presence on chat/p/{user} (with the write ACL's payload check),
 * through the core's real entry points on a fresh LMDB (session.h). */
#include "session.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	return fuzz_session_run(data, size, FUZZ_T_PRESENCE);
}
