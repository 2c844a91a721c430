// LoopRegistry's counting over a fake attacher: no root, no kernel.
#include "loop/loop_registry.hpp"

#include <algorithm>
#include <atomic>
#include <catch2/catch.hpp>
#include <cerrno>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace {

using wrenn::Error;
using wrenn::Result;
using wrenn::loop::AttachedImage;
using wrenn::loop::ImageAttacher;
using wrenn::loop::ImageFile;
using wrenn::loop::LoopRegistry;

// What the fake attacher saw; shared with the test, which keeps it alive past the registry.
struct Ledger {
    std::mutex mutex;
    std::map<std::string, int> live;  // image -> AttachedImage objects alive now
    int attaches = 0;
    int destroyed = 0;
    int max_live_per_image = 0;
    int fail_next = 0;  // errno for the next attach; 0 = succeed
};

class FakeImage final : public AttachedImage {
  public:
    FakeImage(Ledger& ledger, std::string image, std::string device)
        : ledger_(ledger), image_(std::move(image)), device_(std::move(device)) {}
    ~FakeImage() override {
        std::lock_guard lock(ledger_.mutex);
        --ledger_.live[image_];
        ++ledger_.destroyed;
    }
    const std::string& device() const override { return device_; }
    std::uint64_t size_bytes() const override { return 4096; }

  private:
    Ledger& ledger_;
    std::string image_;
    std::string device_;
};

class FakeAttacher final : public ImageAttacher {
  public:
    explicit FakeAttacher(Ledger& ledger) : ledger_(ledger) {}
    Result<std::unique_ptr<AttachedImage>> attach_read_only(const ImageFile& file) override {
        const std::string image = file.path + "@" + file.key();
        int number = 0;
        {
            std::lock_guard lock(ledger_.mutex);
            if (ledger_.fail_next != 0) {
                return Error("attach " + image, std::exchange(ledger_.fail_next, 0));
            }
            number = ledger_.attaches++;
            const int live = ++ledger_.live[image];
            ledger_.max_live_per_image = std::max(ledger_.max_live_per_image, live);
        }
        // Widen the window in which concurrent acquires could attach twice.
        std::this_thread::yield();
        return std::unique_ptr<AttachedImage>(
            std::make_unique<FakeImage>(ledger_, image, "/dev/fake" + std::to_string(number)));
    }

  private:
    Ledger& ledger_;
};

// The image at `path` as an opened file: one inode per path unless the test gives another (a
// template replaced by rename keeps its path and gets a new inode).
ImageFile img(const std::string& path, ino_t inode = 0) {
    return ImageFile{path, -1, 7, inode != 0 ? inode : std::hash<std::string>{}(path) % 100000 + 1};
}
std::string key(const std::string& path) {
    return img(path).key();
}

}  // namespace

TEST_CASE("loop registry: N acquires of one image attach once", "[loop_registry]") {
    Ledger ledger;
    LoopRegistry registry(std::make_unique<FakeAttacher>(ledger));
    std::string first;
    for (int i = 0; i < 5; ++i) {
        auto device = registry.acquire(img("/images/a.img"));
        REQUIRE(device.ok());
        if (i == 0) {
            first = device->device;
        }
        CHECK(device->device == first);
    }
    CHECK(ledger.attaches == 1);
    CHECK(registry.references(key("/images/a.img")) == 5);
    CHECK(registry.attached() == 1);
    auto entries = registry.entries();
    REQUIRE(entries.size() == 1);
    CHECK(entries[0].first == key("/images/a.img"));
    CHECK(entries[0].second == 5);

    auto other = registry.acquire(img("/images/b.img"));
    REQUIRE(other.ok());
    CHECK(other->device != first);
    CHECK(registry.attached() == 2);
    CHECK(ledger.attaches == 2);
}

TEST_CASE("loop registry: the last release drops the device", "[loop_registry]") {
    Ledger ledger;
    LoopRegistry registry(std::make_unique<FakeAttacher>(ledger));
    REQUIRE(registry.acquire(img("/images/a.img")).ok());
    REQUIRE(registry.acquire(img("/images/a.img")).ok());
    registry.release(key("/images/a.img"));
    CHECK(ledger.destroyed == 0);
    CHECK(registry.references(key("/images/a.img")) == 1);
    registry.release(key("/images/a.img"));
    CHECK(ledger.destroyed == 1);
    CHECK(registry.references(key("/images/a.img")) == 0);
    CHECK(registry.attached() == 0);
    CHECK(registry.entries().empty());

    // A later acquire attaches afresh.
    REQUIRE(registry.acquire(img("/images/a.img")).ok());
    CHECK(ledger.attaches == 2);
    CHECK(registry.attached() == 1);
}

TEST_CASE("loop registry: releasing an unknown image is harmless", "[loop_registry]") {
    Ledger ledger;
    LoopRegistry registry(std::make_unique<FakeAttacher>(ledger));
    registry.release(key("/images/never.img"));
    REQUIRE(registry.acquire(img("/images/a.img")).ok());
    registry.release(key("/images/never.img"));
    registry.release(key("/images/a.img"));
    registry.release(key("/images/a.img"));  // one too many
    CHECK(ledger.destroyed == 1);
    CHECK(registry.attached() == 0);
    CHECK(registry.references(key("/images/a.img")) == 0);
}

TEST_CASE("loop registry: a failed attach propagates and leaves no entry", "[loop_registry]") {
    Ledger ledger;
    LoopRegistry registry(std::make_unique<FakeAttacher>(ledger));
    ledger.fail_next = ENOENT;
    auto device = registry.acquire(img("/images/missing.img"));
    REQUIRE_FALSE(device.ok());
    CHECK(device.error().code() == ENOENT);
    CHECK(device.error().message().find("/images/missing.img") != std::string::npos);
    CHECK(registry.attached() == 0);
    CHECK(registry.references(key("/images/missing.img")) == 0);
    CHECK(registry.entries().empty());

    // The failure is not cached: the next acquire tries again.
    auto retry = registry.acquire(img("/images/missing.img"));
    REQUIRE(retry.ok());
    CHECK(registry.references(key("/images/missing.img")) == 1);
}

TEST_CASE("loop registry: 8 threads acquiring and releasing stay consistent", "[loop_registry]") {
    Ledger ledger;
    LoopRegistry registry(std::make_unique<FakeAttacher>(ledger));
    const std::vector<std::string> images = {"/images/a.img", "/images/b.img", "/images/c.img"};
    constexpr int kThreads = 8;
    constexpr int kCycles = 2000;
    std::atomic<int> failures{0};
    std::atomic<int> mismatches{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
        threads.emplace_back([&, t] {
            for (int i = 0; i < kCycles; ++i) {
                const std::string& image = images[static_cast<std::size_t>(t + i) % images.size()];
                auto first = registry.acquire(img(image));
                auto second = registry.acquire(img(image));
                if (!first.ok() || !second.ok()) {
                    ++failures;
                    continue;
                }
                // Both references are held, so both must name the same device.
                if (first->device != second->device) {
                    ++mismatches;
                }
                registry.release(key(image));
                registry.release(key(image));
            }
        });
    }
    for (auto& thread : threads) {
        thread.join();
    }
    CHECK(failures == 0);
    CHECK(mismatches == 0);
    CHECK(registry.attached() == 0);
    CHECK(registry.entries().empty());
    for (const auto& image : images) {
        CHECK(registry.references(key(image)) == 0);
        CHECK(ledger.live[image + "@" + key(image)] == 0);
    }
    CHECK(ledger.attaches == ledger.destroyed);
    CHECK(ledger.attaches >= 1);
    // Never two devices for one image at once.
    CHECK(ledger.max_live_per_image == 1);
}

TEST_CASE("loop registry: a template replaced by rename is another image", "[loop_registry]") {
    Ledger ledger;
    LoopRegistry registry(std::make_unique<FakeAttacher>(ledger));
    auto old_image = registry.acquire(img("/images/a.img", 11));
    auto new_image = registry.acquire(img("/images/a.img", 12));
    REQUIRE(old_image.ok());
    REQUIRE(new_image.ok());
    CHECK(old_image->device != new_image->device);
    CHECK(old_image->size_bytes == 4096);
    CHECK(registry.attached() == 2);
    registry.release(img("/images/a.img", 11).key());
    CHECK(registry.references(img("/images/a.img", 11).key()) == 0);
    CHECK(registry.references(img("/images/a.img", 12).key()) == 1);
    CHECK(ledger.destroyed == 1);
}
