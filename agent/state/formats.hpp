#pragma once

#include <boost/json/value.hpp>
#include <string>

#include "common/result.hpp"

namespace wrenn::agent {

// The versions of the files this agent writes in its state dir. Each file says its version in a
// top-level "version" field; a file without one is version 1 (the first agents wrote none in the
// digest index). An agent reads every version up to its own and refuses a newer one: an older
// agent started over a newer agent's state dir stops before it changes anything, rather than
// drop fields it does not know when it next writes the file.
//   sandboxes/<id>/sandbox.json   records: 1
//   template-digests.json         the digest index: 1 (a bare "sha256" of the whole image per
//                                 version), 2 ("digest": blocks-sha256-4k, "sha256": "sha256:..")
// Archives and template image streams carry their own version in their header
// (docs/archive.md); the digest cache's list files are checked by their own header when read,
// and one this agent cannot read is only a cache miss.
inline constexpr int kRecordFormat = 1;
inline constexpr int kDigestIndexFormat = 2;
inline constexpr const char* kRecordName = "sandbox.json";
inline constexpr const char* kDigestIndexName = "template-digests.json";

// A JSON document's "version": 1 when it has none, 0 when it is not a positive integer.
int format_version(const boost::json::value& document);

// The refusal for `file` of format `found`, newer than `newest` (ENOTSUP): it names both
// versions and says what to do.
Error newer_format(const std::string& file, int found, int newest);

// Every record and the digest index of `state_dir`, read (never written): ENOTSUP naming the
// first file whose format is newer than this agent's. Files that cannot be read or parsed are
// not this check's business (recovery reports them and keeps them).
Result<void> check_state_formats(const std::string& state_dir);

}  // namespace wrenn::agent
