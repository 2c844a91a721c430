#pragma once

// The preconditions operations share, as free functions over the platform: each answers the
// Failure a client sees (with `what`, the operation, in its message), or nothing when the
// precondition holds.
#include <optional>
#include <string>
#include <string_view>

#include "agent/platform/platform.hpp"
#include "agent/platform/space.hpp"
#include "agent/state/sandbox.hpp"
#include "agent/table/failure.hpp"

namespace wrenn::agent {

// What sandbox ids and template names match: safe as part of a dm name, a dm UUID and a file
// name (dm::is_valid_sandbox_id).
inline constexpr std::string_view kNameRule = "[A-Za-z0-9][A-Za-z0-9_-]{0,63}";
bool is_valid_name(std::string_view name);
// 400 "<field> must match <kNameRule>". The name is never echoed: it may hold anything, a
// newline for the log among it.
std::optional<Failure> check_name(std::string_view name, std::string_view field,
                                  const std::string& what);

// 503 when device-mapper or loop devices are not usable.
std::optional<Failure> check_kernel(Platform& platform, const std::string& what);
// 507 insufficient_storage when the space watcher (if any) refuses new work now.
std::optional<Failure> check_space(SpaceWatcher* space, const std::string& what);
// Holds `bytes` on the state filesystem for work in flight (a fork's or export's copy, an
// import's CoW) until the reservation goes: 507 insufficient_storage when that, with every other
// reservation, would leave less than --min-free. An empty reservation when space is not watched.
Result<SpaceReservation, Failure> reserve_space(SpaceWatcher* space, std::uint64_t bytes,
                                                const std::string& what);
// The disk space a file takes now (its allocated blocks), 0 when it cannot be read: a copy's
// worst case.
std::uint64_t allocated_bytes_of(const std::string& path);
// A TCMU origin the API may not attach: a bad value is 400, a refusal by the allowlist 403
// (tcmu_not_allowed), a kernel without TCMU 503. Nothing for other origins.
std::optional<Failure> check_tcmu(Platform& platform, const OriginSpec& origin,
                                  const std::string& what);
// Whether the sandbox's CoW can still be used as a snapshot: a running one's as the kernel
// reports it now, a paused one's from its exception store on disk. 409 snapshot_invalid when
// the kernel marked it invalid or full.
std::optional<Failure> check_cow_usable(Platform& platform, const Sandbox& sb,
                                        const std::string& what);
// 409 invalid_state when a paused sandbox's device is live (a record write that failed, or
// someone's dmsetup), so its CoW may still change; `then` is the operation the message tells
// the client to retry.
std::optional<Failure> check_no_live_device(Platform& platform, const std::string& id,
                                            const std::string& what, std::string_view then);

// Whether a live device named for this sandbox carries another state dir's tag (device names
// are host-wide; such a device is never ours to remove).
Result<bool> held_by_another_state_dir(Platform& platform, const std::string& id);
// What a failed device removal means to the client: held open (409 device_busy) is something
// they can fix.
Failure removal_failure(Error error);

}  // namespace wrenn::agent
