#pragma once

// Names and paths of a TCMU device in configfs, as overlaybd-attacher forms them. Pure functions
// (result_file_for_config only reads the config file), unit-tested in tcmu_naming_test.cpp.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "common/result.hpp"

namespace wrenn::tcmu {

// The HBA number of the default tenant: user_999999999 in configfs. Only it is supported.
inline constexpr std::uint64_t kDefaultHba = 999999999;

// A device id: decimal digits, 1 to 13 of them (the WWN pads it to 13).
bool is_valid_id(std::string_view id);

// The loopback target's WWN: "naa.199" + id zero-padded to 13 digits (123456 ->
// "naa.1990000000123456"). 199 is overlaybd's prefix for the default tenant.
std::string wwn_for_id(std::string_view id);

// Relative to the configfs root: the HBA folder "target/core/user_999999999", the core device
// "target/core/user_999999999/dev_<id>" and the loopback target "target/loopback/<wwn>".
std::string hba_dir();
std::string core_device_name(std::string_view id);  // "dev_<id>"
std::string core_device_dir(std::string_view id);
std::string loopback_dir();
std::string loopback_target_dir(std::string_view id);

// The id of a TCMU origin: SHA-256 of the whole spec (handler, config path, dev_size; see
// origin_spec_bytes), its first 64 bits mod 10^12, never 0. Stable, so that an agent that
// restarts finds the device it attached for the same spec; a different handler or size is a
// different device. Why a crafted collision buys nothing: see the comment in naming.cpp.
std::string id_for_origin(std::string_view handler, std::string_view config_path,
                          std::optional<std::uint64_t> size_bytes);

// The id agents before SHA-256 ids gave a config: FNV-1a 64 of the path, mod 10^12, never 0.
// Only for finding a device such an agent attached, which is then reused or detached only when
// its dev_config reads back as this exact spec (never derived for a new attach).
std::string legacy_id_for_config(std::string_view config_path);

// The canonical bytes that id_for_origin hashes: a version line, then each field as
// "<name>=<length>:<bytes>\n" (length-prefixed, so no field can spill into the next; an absent
// size has length 0).
std::string origin_spec_bytes(std::string_view handler, std::string_view config_path,
                              std::optional<std::uint64_t> size_bytes);

// The unit serial attach writes into a device the agent makes (wwn/vpd_unit_serial, before the
// LUN is exported; the kernel refuses it afterwards): "WRENN-TCMU-<tag>-<id>", with the tag of the
// agent's state dir. It says whose the device is, so that recovery detaches only its own, and it
// is unique per device, as a SCSI serial should be (udev names /dev/disk/by-id links after it).
std::string owner_serial(std::string_view tag, std::string_view id);

// Whether a serial can go into wwn/vpd_unit_serial as is: 1 to 253 characters (the kernel's
// INQUIRY_VPD_SERIAL_LEN is 254 with the NUL) from [A-Za-z0-9._-] (the kernel strips spaces).
bool is_valid_serial(std::string_view serial);

// The value from what wwn/vpd_unit_serial shows: "T10 VPD Unit Serial Number: X\n" -> "X", and
// "" when none was written.
std::string parse_unit_serial(std::string_view text);

// The userspace program that serves a handler, for messages: "overlaybd-tcmu" for overlaybd,
// "tcmu-runner" for every other handler (qcow, rbd, glfs, file, ...).
std::string_view backstore_for_handler(std::string_view handler);

// The "dev_config" control value: "<handler>/<config path>" (an absolute path gives "qcow//x").
std::string dev_config_for(std::string_view handler, std::string_view config_path);

// The config path back from what attrib/dev_config shows ("overlaybd//a/b.json\n" -> "/a/b.json"):
// everything after the handler name and its slash, without the trailing newline.
Result<std::string> config_from_dev_config(std::string_view dev_config);

// The SCSI address from tpgt_1/address ("2:0:1\n" -> "2:0:1"); errors unless it is H:C:T.
Result<std::string> parse_scsi_address(std::string_view text);

// Where overlaybd reports the result of opening a device: the "resultFile" of its
// config.v1.json, absolute as is, relative to the config's folder, or
// "<config dir>/init-debug.log" when absent. Errors when the config cannot be read or parsed.
// This is overlaybd-attacher's rule, for the operator's CLI; the API uses
// contained_result_file (origin_policy.hpp).
Result<std::string> result_file_for_config(const std::string& config_path);

// The "resultFile" field of a config's text: nullopt when absent or empty. EINVAL when the text
// is not a JSON object or the field is not a string. Pure; the fuzz harness drives it.
Result<std::optional<std::string>> result_file_field(std::string_view config_text);

}  // namespace wrenn::tcmu
