#pragma once

// A template image arriving as an upload's body (PUT /templates/{name}), written as it comes
// into a new sparse file and hashed on the way (template_blocks.hpp), so that its digest is
// known without reading it back.
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>

#include "agent/state/template_blocks.hpp"
#include "archive/format.hpp"
#include "common/result.hpp"

namespace wrenn::agent {

// How the body carries the image.
enum class ImageForm {
    Raw,     // the image's bytes (application/octet-stream)
    Zstd,    // the image's bytes compressed with zstd, any number of frames (application/zstd)
    Stream,  // a template image stream (docs/archive.md; application/vnd.wrenn.template)
    Detect,  // by the first bytes: a stream's magic, zstd's frame magic, else raw
};
std::string_view to_string(ImageForm form);

// What a finished receiver wrote.
struct ReceivedImage {
    std::uint64_t size_bytes = 0;
    std::uint64_t data_bytes = 0;  // the bytes of the leaves that are not all zeros (written)
    BlockList list;
    std::string digest;  // list.digest()
};

// One upload. feed() the body's bytes in order, then finish() at its end. Leaves of 4 KiB that
// are all zeros are never written: the file keeps a hole there. Errors: EBADMSG for a body that
// is not a well-formed image in its form (a cut stream, a broken zstd frame, a stream whose
// digest is not its content's, a size that is not a non-zero multiple of 512), EFBIG past
// max_bytes, and what writing the file failed with (ENOSPC). Memory is bounded: one zstd window
// or archive frame and a write buffer of 1 MiB. Move-only.
class ImageReceiver {
  public:
    struct Hooks {
        // A stream's header, once checked: the image's size and how many chunks come, known
        // before any is written (the caller's size and space checks). May refuse.
        std::function<Result<void>(const archive::Header&)> on_header;
        // Every `room_every` bytes written: the caller checks the filesystem still has room.
        std::function<Result<void>(std::uint64_t written)> on_progress;
        std::uint64_t room_every = 64ull << 20;
    };

    // Writes to `out_fd` (a new, empty file) and the leaf pages to leaves_fd (-1: none).
    ImageReceiver(ImageForm form, int out_fd, int leaves_fd, std::uint64_t max_bytes, Hooks hooks);
    ~ImageReceiver();
    ImageReceiver(ImageReceiver&&) noexcept;
    ImageReceiver& operator=(ImageReceiver&&) noexcept;

    Result<void> feed(std::span<const std::byte> bytes);
    // The body ended: the last leaf, the file's size, and the list.
    Result<ReceivedImage> finish();

    // The form, once the first bytes told it (Detect).
    [[nodiscard]] ImageForm form() const;

  private:
    struct State;
    std::unique_ptr<State> state_;
};

}  // namespace wrenn::agent
