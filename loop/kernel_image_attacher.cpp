// The registry's real attacher: LoopDevice underneath, no ioctls of its own.
#include <spdlog/spdlog.h>

#include "loop/loop_device.hpp"
#include "loop/loop_registry.hpp"

namespace wrenn::loop {
namespace {

// Keeps one read-only loop open; the loop (autoclear) goes when this and every other opener
// (e.g. dm tables) have closed it.
class KernelAttachedImage final : public AttachedImage {
  public:
    explicit KernelAttachedImage(LoopDevice loop)
        : loop_(std::move(loop)), size_bytes_(loop_.size_bytes()) {}
    const std::string& device() const override { return loop_.path(); }
    std::uint64_t size_bytes() const override { return size_bytes_; }

  private:
    LoopDevice loop_;
    std::uint64_t size_bytes_;  // fixed while bound: a loop does not follow its file's size
};

class KernelImageAttacher final : public ImageAttacher {
  public:
    Result<std::unique_ptr<AttachedImage>> attach_read_only(const ImageFile& image) override {
        // Reuse first: after an agent restart the image's loop is still held by dm tables, and
        // a second loop on the same file would split the page cache between two devices.
        auto existing =
            LoopDevice::open_existing(image.device, image.inode, image.path, /*read_only=*/true);
        if (!existing) {
            return std::move(existing).error();
        }
        if (existing->has_value()) {
            LoopDevice& loop = **existing;
            spdlog::info("attach {}: reusing {}", image.path, loop.path());
            // A loop bound by an older agent may do direct I/O; a template's loop must not
            // (see kTemplateLoop). Not worth failing for: the loop works either way.
            if (loop.direct_io() != kTemplateLoop.direct_io) {
                if (auto set = loop.set_direct_io(kTemplateLoop.direct_io); set) {
                    spdlog::info(
                        "attach {}: {} switched to buffered I/O, so that every sandbox "
                        "over it shares the template's page cache",
                        image.path, loop.path());
                } else {
                    spdlog::warn("attach {}: {}", image.path, set.error().message());
                }
            }
            return std::unique_ptr<AttachedImage>(
                std::make_unique<KernelAttachedImage>(std::move(**existing)));
        }
        auto loop = LoopDevice::attach(image.fd, image.path, kTemplateLoop);
        if (!loop) {
            return std::move(loop).error();
        }
        spdlog::info("attach {}: bound {}{}", image.path, loop->path(),
                     loop->direct_io() ? " (direct I/O)" : "");
        return std::unique_ptr<AttachedImage>(
            std::make_unique<KernelAttachedImage>(std::move(*loop)));
    }
};

}  // namespace

std::unique_ptr<ImageAttacher> make_kernel_image_attacher() {
    return std::make_unique<KernelImageAttacher>();
}

}  // namespace wrenn::loop
