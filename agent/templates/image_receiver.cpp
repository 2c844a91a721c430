#include "agent/templates/image_receiver.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zstd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <vector>

#include "archive/reader.hpp"
#include "flatten/image_copy.hpp"

namespace wrenn::agent {

namespace {

constexpr std::size_t kWriteRunBytes = 1 << 20;
constexpr std::array<std::uint8_t, 4> kZstdMagic{0x28, 0xB5, 0x2F, 0xFD};

bool all_zero(std::span<const std::byte> data) {
    return data.empty() || (data[0] == std::byte{0} &&
                            std::memcmp(data.data(), data.data() + 1, data.size() - 1) == 0);
}

// XFS preallocates past the end of a file that writes extend, and a later write further out
// leaves those blocks inside the file, allocated but never written (unwritten extents, which
// read as zeros and which SEEK_HOLE reports as holes): an image of 8 MiB pieces 56 MiB apart
// allocated twice its data. When the file holds clearly more than was written, the holes are
// punched; otherwise (ext4, or a size set before the writes) nothing is done.
Result<void> trim_unwritten(int fd, std::uint64_t size, std::uint64_t written) {
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
        return errno_error("stat the new template image");
    }
    const std::uint64_t allocated = static_cast<std::uint64_t>(st.st_blocks) * 512;
    if (allocated <= written + written / 100 + (1u << 20)) {
        return {};
    }
    for (off_t at = 0; static_cast<std::uint64_t>(at) < size;) {
        const off_t hole = ::lseek(fd, at, SEEK_HOLE);
        if (hole < 0 || static_cast<std::uint64_t>(hole) >= size) {
            break;
        }
        off_t data = ::lseek(fd, hole, SEEK_DATA);
        if (data < 0) {
            data = static_cast<off_t>(size);  // ENXIO: a hole to the end
        }
        if (::fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, hole, data - hole) != 0) {
            return errno_error("punch the unwritten blocks out of the new template image");
        }
        at = data;
    }
    return {};
}

Error bad_image(std::string detail) {
    return Error("read the image", EBADMSG, std::move(detail));
}

}  // namespace

std::string_view to_string(ImageForm form) {
    switch (form) {
        case ImageForm::Raw:
            return "raw";
        case ImageForm::Zstd:
            return "zstd";
        case ImageForm::Stream:
            return "template image stream";
        case ImageForm::Detect:
            break;
    }
    return "not known yet";
}

struct ImageReceiver::State {
    struct FreeDctx {
        void operator()(ZSTD_DCtx* d) const noexcept { ZSTD_freeDCtx(d); }
    };

    State(ImageForm f, int out, int leaves, std::uint64_t max, Hooks h)
        : form(f),
          out_fd(out),
          hasher(leaves),
          max_bytes(max),
          hooks(std::move(h)),
          next_progress(hooks.room_every) {
        begin();
    }

    ImageForm form;
    int out_fd;
    BlockHasher hasher;
    std::uint64_t max_bytes;
    Hooks hooks;

    std::vector<std::byte> sniffed;  // Detect: the first bytes, until they tell the form

    // Raw bytes (also what zstd decompresses to): the leaf being filled.
    std::vector<std::byte> leaf;
    std::uint64_t leaf_index = 0;
    std::uint64_t raw_bytes = 0;

    std::unique_ptr<ZSTD_DCtx, FreeDctx> dctx;
    std::vector<std::byte> zstd_out;
    std::size_t zstd_last = 0;  // ZSTD_decompressStream's last hint: 0 at a frame's end
    bool zstd_any = false;

    std::optional<archive::Reader> reader;
    std::optional<archive::Header> header;

    // Writes: contiguous non-zero leaves gathered into one pwrite.
    std::vector<std::byte> run;
    std::uint64_t run_offset = 0;
    std::uint64_t written = 0;
    std::uint64_t data_bytes = 0;
    std::uint64_t next_progress;

    void begin() {
        switch (form) {
            case ImageForm::Raw:
                leaf.reserve(kLeafBytes);
                break;
            case ImageForm::Zstd:
                leaf.reserve(kLeafBytes);
                dctx.reset(ZSTD_createDCtx());
                zstd_out.resize(ZSTD_DStreamOutSize());
                break;
            case ImageForm::Stream:
                reader.emplace([this](const archive::Header& h) { return on_header(h); },
                               [this](std::uint64_t index, std::span<const std::byte> data) {
                                   return on_chunk(index, data);
                               });
                break;
            case ImageForm::Detect:
                break;
        }
    }

    Result<void> flush() {
        if (run.empty()) {
            return {};
        }
        auto wrote = flatten::pwrite_writer(out_fd, "the new template image")(run_offset, run);
        if (!wrote) {
            return std::move(wrote).error();
        }
        written += run.size();
        run.clear();
        if (hooks.on_progress && written >= next_progress) {
            next_progress = written + hooks.room_every;
            return hooks.on_progress(written);
        }
        return {};
    }

    // One leaf of the image, as long as the image has it.
    Result<void> take_leaf(std::uint64_t index, std::span<const std::byte> data) {
        if (all_zero(data)) {
            return {};  // a hole in the new file; its hash is the zero leaf's
        }
        if (auto hashed = hasher.add(index, data); !hashed) {
            return hashed;
        }
        const std::uint64_t offset = index * kLeafBytes;
        if (!run.empty() && (offset != run_offset + run.size() || run.size() >= kWriteRunBytes)) {
            if (auto flushed = flush(); !flushed) {
                return flushed;
            }
        }
        if (run.empty()) {
            run_offset = offset;
        }
        run.insert(run.end(), data.begin(), data.end());
        data_bytes += data.size();
        return {};
    }

    Result<void> over_limit(std::uint64_t bytes) const {
        return Error("read the image", EFBIG,
                     "the image is larger than " + std::to_string(max_bytes) +
                         " bytes (--max-template-bytes), at least " + std::to_string(bytes));
    }

    Result<void> feed_raw(std::span<const std::byte> bytes) {
        raw_bytes += bytes.size();
        if (raw_bytes > max_bytes) {
            return over_limit(raw_bytes);
        }
        while (!bytes.empty()) {
            const std::size_t n = std::min<std::size_t>(kLeafBytes - leaf.size(), bytes.size());
            if (leaf.empty() && n == kLeafBytes) {
                // A whole leaf in place: no copy.
                if (auto took = take_leaf(leaf_index++, bytes.first(n)); !took) {
                    return took;
                }
            } else {
                leaf.insert(leaf.end(), bytes.begin(), bytes.begin() + static_cast<long>(n));
                if (leaf.size() == kLeafBytes) {
                    if (auto took = take_leaf(leaf_index++, leaf); !took) {
                        return took;
                    }
                    leaf.clear();
                }
            }
            bytes = bytes.subspan(n);
        }
        return {};
    }

    Result<void> feed_zstd(std::span<const std::byte> bytes) {
        ZSTD_inBuffer in{bytes.data(), bytes.size(), 0};
        bool full = false;
        while (in.pos < in.size || full) {
            ZSTD_outBuffer out{zstd_out.data(), zstd_out.size(), 0};
            const std::size_t consumed = in.pos;
            const std::size_t ret = ZSTD_decompressStream(dctx.get(), &out, &in);
            if (ZSTD_isError(ret) != 0) {
                return bad_image(std::string("the zstd stream is broken: ") +
                                 ZSTD_getErrorName(ret));
            }
            if (out.pos == 0 && in.pos == consumed) {
                // Nothing left to flush (a frame that filled the buffer exactly): the call's
                // hint is the next frame's, which is not coming.
                break;
            }
            zstd_last = ret;
            zstd_any = true;
            full = out.pos == out.size;
            if (auto fed = feed_raw(std::span(zstd_out.data(), out.pos)); !fed) {
                return fed;
            }
        }
        return {};
    }

    Result<void> on_header(const archive::Header& h) {
        if (!h.image) {
            return bad_image(
                "this is a sandbox archive, not a template image stream: import it with POST "
                "/sandboxes/import");
        }
        if (h.chunk_bytes != kLeafBytes) {
            return bad_image("a template image stream has 4096-byte chunks, this one " +
                             std::to_string(h.chunk_bytes));
        }
        if (h.origin_bytes > max_bytes) {
            return over_limit(h.origin_bytes);
        }
        header = h;
        // The size first: no write extends the file, so none leaves preallocated blocks behind.
        if (auto sized = flatten::set_file_size(out_fd, h.origin_bytes, "the new template image");
            !sized) {
            return sized;
        }
        if (hooks.on_header) {
            return hooks.on_header(h);
        }
        return {};
    }

    Result<void> on_chunk(std::uint64_t index, std::span<const std::byte> data) {
        const std::uint64_t at = index * kLeafBytes;
        return take_leaf(
            index, data.first(std::min<std::uint64_t>(data.size(), header->origin_bytes - at)));
    }

    Result<void> feed(std::span<const std::byte> bytes) {
        if (form == ImageForm::Detect) {
            sniffed.insert(sniffed.end(), bytes.begin(), bytes.end());
            if (sniffed.size() < archive::kMagic.size()) {
                return {};
            }
            return decide();
        }
        switch (form) {
            case ImageForm::Raw:
                return feed_raw(bytes);
            case ImageForm::Zstd:
                return feed_zstd(bytes);
            default:
                return reader->feed(bytes);
        }
    }

    // Detect: the form from the first bytes, then those bytes fed to it.
    Result<void> decide() {
        auto starts_with = [&](const auto& magic) {
            return sniffed.size() >= magic.size() &&
                   std::memcmp(sniffed.data(), magic.data(), magic.size()) == 0;
        };
        form = starts_with(archive::kMagic) ? ImageForm::Stream
               : starts_with(kZstdMagic)    ? ImageForm::Zstd
                                            : ImageForm::Raw;
        begin();
        auto first = std::move(sniffed);
        sniffed.clear();
        return feed(first);
    }

    Result<ReceivedImage> finish() {
        if (form == ImageForm::Detect) {
            if (auto decided = decide(); !decided) {
                return std::move(decided).error();
            }
        }
        std::uint64_t size = 0;
        if (form == ImageForm::Stream) {
            if (auto ended = reader->finish(); !ended) {
                return std::move(ended).error();
            }
            size = header->origin_bytes;
        } else {
            if (form == ImageForm::Zstd && (!zstd_any || zstd_last != 0)) {
                return bad_image(zstd_any ? "the zstd stream ended inside a frame (cut short?)"
                                          : "the body is empty");
            }
            if (!leaf.empty()) {
                if (auto took = take_leaf(leaf_index, leaf); !took) {
                    return std::move(took).error();
                }
            }
            size = raw_bytes;
            if (size == 0 || size % 512 != 0) {
                return bad_image("the image is " + std::to_string(size) +
                                 " bytes; a template is a non-zero multiple of 512 bytes (cut "
                                 "short?)");
            }
        }
        if (auto flushed = flush(); !flushed) {
            return std::move(flushed).error();
        }
        if (auto sized = flatten::set_file_size(out_fd, size, "the new template image"); !sized) {
            return std::move(sized).error();
        }
        if (auto trimmed = trim_unwritten(out_fd, size, written); !trimmed) {
            return std::move(trimmed).error();
        }
        auto list = hasher.finish(size);
        if (!list) {
            return std::move(list).error();
        }
        ReceivedImage out{size, data_bytes, std::move(list).value(), {}};
        out.digest = out.list.digest();
        if (header && header->template_digest_name() != out.digest) {
            return bad_image("the stream's header names digest " + header->template_digest_name() +
                             " but its content hashes to " + out.digest +
                             " (damaged, or the image changed while it was sent)");
        }
        return out;
    }
};

ImageReceiver::ImageReceiver(ImageForm form, int out_fd, int leaves_fd, std::uint64_t max_bytes,
                             Hooks hooks)
    : state_(std::make_unique<State>(form, out_fd, leaves_fd, max_bytes, std::move(hooks))) {}
ImageReceiver::~ImageReceiver() = default;
ImageReceiver::ImageReceiver(ImageReceiver&&) noexcept = default;
ImageReceiver& ImageReceiver::operator=(ImageReceiver&&) noexcept = default;

Result<void> ImageReceiver::feed(std::span<const std::byte> bytes) {
    return state_->feed(bytes);
}

Result<ReceivedImage> ImageReceiver::finish() {
    return state_->finish();
}

ImageForm ImageReceiver::form() const {
    return state_->form;
}

}  // namespace wrenn::agent
