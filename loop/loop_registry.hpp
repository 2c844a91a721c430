#pragma once

#include <sys/types.h>

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

// An image file the caller opened and checked, known by its inode: a template replaced by
// rename is another image, and the path is only for messages. `fd` need only stay open for the
// duration of the acquire that is given it.
struct ImageFile {
    std::string path;
    int fd = -1;
    dev_t device = 0;
    ino_t inode = 0;

    // "<st_dev>:<st_ino>", the registry's key.
    [[nodiscard]] std::string key() const;
};

// One read-only block device for an image; destroying it lets the device go.
class AttachedImage {
  public:
    virtual ~AttachedImage() = default;
    virtual const std::string& device() const = 0;
    // What the device serves (BLKGETSIZE64): the file's size when it was bound, in whole
    // sectors. A file that grew or shrank since does not change it.
    virtual std::uint64_t size_bytes() const = 0;
};

// How the registry gets a read-only loop for an image; faked in unit tests.
class ImageAttacher {
  public:
    virtual ~ImageAttacher() = default;
    virtual Result<std::unique_ptr<AttachedImage>> attach_read_only(const ImageFile& image) = 0;
};

// The real one: reuses a loop already bound to the image's inode (LoopDevice::open_existing),
// else binds a new read-only, autoclear loop to the open fd (direct I/O when the file allows);
// keeps the LoopDevice open for as long as the AttachedImage lives.
std::unique_ptr<ImageAttacher> make_kernel_image_attacher();

// A shared device as acquire hands it out.
struct SharedDevice {
    std::string device;
    std::uint64_t size_bytes = 0;
};

// Owns one shared read-only device per image inode, reference-counted; thread-safe.
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

    // The image's device; attaches on first use.
    Result<SharedDevice> acquire(const ImageFile& image);
    // By ImageFile::key(). The last release drops the device. Releasing an image that holds no
    // reference is a caller bug: it is logged and ignored.
    void release(const std::string& key);
    // References held now (0 while an attach is still in flight).
    std::size_t references(const std::string& key) const;
    // How many images have a device now.
    std::size_t attached() const;
    // Key -> references, for every image with a device now.
    std::vector<std::pair<std::string, std::size_t>> entries() const;

  private:
    enum class State { attaching, attached, releasing };
    struct Entry {
        State state = State::attaching;
        std::size_t references = 0;
        std::string path;  // for messages
        std::unique_ptr<AttachedImage> image;
    };

    std::unique_ptr<ImageAttacher> attacher_;
    mutable std::mutex mutex_;
    std::condition_variable changed_;       // an entry left the attaching or releasing state
    std::map<std::string, Entry> entries_;  // by ImageFile::key()
};

}  // namespace wrenn::loop
