#pragma once

#include <condition_variable>
#include <cstddef>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "common/result.hpp"

namespace wrenn::loop {

// One read-only block device for an image; destroying it lets the device go.
class AttachedImage {
  public:
    virtual ~AttachedImage() = default;
    virtual const std::string& device() const = 0;
};

// How the registry gets a read-only loop for an image; faked in unit tests.
class ImageAttacher {
  public:
    virtual ~ImageAttacher() = default;
    virtual Result<std::unique_ptr<AttachedImage>> attach_read_only(const std::string& image) = 0;
};

// The real one: reuses a loop already bound to the image (LoopDevice::open_existing), else
// attaches a new read-only, autoclear loop (direct I/O when the file allows); keeps the
// LoopDevice open for as long as the AttachedImage lives.
std::unique_ptr<ImageAttacher> make_kernel_image_attacher();

// Owns one shared read-only device per image path, reference-counted; thread-safe.
// Guarantees: at most one AttachedImage per image exists at any time, concurrent first
// acquires attach once, and the last release destroys it.
//
// Locking: the attach and the detach (destroying the AttachedImage, which may sync and clear a
// loop) run outside the mutex so that other images are not held up; while either is in flight
// the image's entry is marked attaching/releasing and acquires of that image wait on a condition
// variable. A failed attach is not cached: the waiters then try again themselves.
class LoopRegistry {
  public:
    explicit LoopRegistry(std::unique_ptr<ImageAttacher> attacher);
    ~LoopRegistry();
    LoopRegistry(const LoopRegistry&) = delete;
    LoopRegistry& operator=(const LoopRegistry&) = delete;

    // The device path; attaches on first use.
    Result<std::string> acquire(const std::string& image);
    // The last release drops the device. Releasing an image that holds no reference is a caller
    // bug: it is logged and ignored.
    void release(const std::string& image);
    // References held now (0 while an attach is still in flight).
    std::size_t references(const std::string& image) const;
    // How many images have a device now.
    std::size_t attached() const;
    // Image -> references, for every image with a device now.
    std::vector<std::pair<std::string, std::size_t>> entries() const;

  private:
    enum class State { attaching, attached, releasing };
    struct Entry {
        State state = State::attaching;
        std::size_t references = 0;
        std::unique_ptr<AttachedImage> image;
    };

    std::unique_ptr<ImageAttacher> attacher_;
    mutable std::mutex mutex_;
    std::condition_variable changed_;  // an entry left the attaching or releasing state
    std::map<std::string, Entry> entries_;
};

}  // namespace wrenn::loop
