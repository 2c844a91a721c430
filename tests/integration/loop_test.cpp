// LoopDevice and LoopRegistry against the real loop driver (root, in the VM). Image files live
// in /scratch (XFS, so direct I/O works as on a host) and carry WRENN_TEST_PREFIX.
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <latch>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "loop/loop_device.hpp"
#include "loop/loop_registry.hpp"

namespace {

using wrenn::loop::AttachOptions;
using wrenn::loop::LoopDevice;
using wrenn::loop::LoopRegistry;

constexpr std::size_t kImageBytes = 4 << 20;

std::string prefix() {
    const char* p = std::getenv("WRENN_TEST_PREFIX");
    return p != nullptr && *p != '\0' ? p : "wrenn-test";
}

std::string scratch_dir() {
    const char* d = std::getenv("WRENN_TEST_SCRATCH");  // for running outside the VM
    return d != nullptr && *d != '\0' ? d : "/scratch";
}

// A sparse image file of kImageBytes, removed at scope exit.
class ScratchImage {
  public:
    explicit ScratchImage(const std::string& name, const std::string& dir = scratch_dir())
        : path_(dir + "/" + prefix() + "-loop-" + name + ".img") {
        struct stat st {};
        REQUIRE(::stat(dir.c_str(), &st) == 0);
        REQUIRE(S_ISDIR(st.st_mode));
        const int fd = ::open(path_.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        REQUIRE(fd >= 0);
        REQUIRE(::ftruncate(fd, kImageBytes) == 0);
        ::close(fd);
    }
    ~ScratchImage() { ::unlink(path_.c_str()); }
    ScratchImage(const ScratchImage&) = delete;
    ScratchImage& operator=(const ScratchImage&) = delete;
    const std::string& path() const { return path_; }

  private:
    std::string path_;
};

bool loop_bound(int number) {
    struct stat st {};
    return ::stat(("/sys/block/loop" + std::to_string(number) + "/loop").c_str(), &st) == 0;
}

std::string read_line(const std::string& path) {
    std::ifstream in(path);
    std::string line;
    std::getline(in, line);
    return line;
}

// Numbers of the loops bound to this file (by device and inode).
std::vector<int> loops_bound_to(const std::string& file) {
    struct stat st {};
    REQUIRE(::stat(file.c_str(), &st) == 0);
    auto bound = LoopDevice::list_bound();
    REQUIRE(bound.ok());
    std::vector<int> out;
    for (const auto& s : *bound) {
        if (s.backing_dev == st.st_dev && s.backing_ino == st.st_ino) {
            out.push_back(s.number);
        }
    }
    return out;
}

// Polls (bounded) until the predicate holds; the kernel may finish an autoclear after close().
template <class Pred>
bool eventually(Pred pred, std::chrono::milliseconds limit = std::chrono::seconds(10)) {
    const auto deadline = std::chrono::steady_clock::now() + limit;
    while (!pred()) {
        if (std::chrono::steady_clock::now() > deadline) {
            return false;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return true;
}

bool no_loop_on(const std::string& file) {
    return eventually([&] { return loops_bound_to(file).empty(); });
}

}  // namespace

TEST_CASE("loop: a read-write loop writes through to its file and detaches", "[loop]") {
    REQUIRE(::geteuid() == 0);
    ScratchImage image("rw");
    auto loop = LoopDevice::attach(image.path(), AttachOptions{.read_only = false});
    INFO((loop.ok() ? std::string() : loop.error().message()));
    REQUIRE(loop.ok());
    const int number = loop->number();
    CHECK(loop->path() == "/dev/loop" + std::to_string(number));
    CHECK(loop->size_bytes() == kImageBytes);
    CHECK(loop_bound(number));
    CHECK(read_line("/sys/block/loop" + std::to_string(number) + "/ro") == "0");
    struct stat node {};
    REQUIRE(::stat(loop->path().c_str(), &node) == 0);
    CHECK(node.st_rdev == loop->device_number());

    auto bound = LoopDevice::list_bound();
    REQUIRE(bound.ok());
    auto it = std::find_if(bound->begin(), bound->end(),
                           [&](const auto& s) { return s.number == number; });
    REQUIRE(it != bound->end());
    CHECK(it->backing_file == image.path());
    CHECK(it->device == loop->path());
    CHECK_FALSE(it->read_only);
    CHECK(it->autoclear);

    std::vector<char> pattern(4096);
    for (std::size_t i = 0; i < pattern.size(); ++i) {
        pattern[i] = static_cast<char>('a' + i % 26);
    }
    {
        const int fd = ::open(loop->path().c_str(), O_RDWR | O_CLOEXEC);
        REQUIRE(fd >= 0);
        CHECK(::pwrite(fd, pattern.data(), pattern.size(), 8192) ==
              static_cast<ssize_t>(pattern.size()));
        CHECK(::fsync(fd) == 0);
        ::close(fd);
    }
    auto detached = loop->detach();
    INFO((detached.ok() ? std::string() : detached.error().message()));
    REQUIRE(detached.ok());
    CHECK_FALSE(loop->is_open());
    CHECK(eventually([&] { return !loop_bound(number); }));

    std::vector<char> back(pattern.size());
    const int fd = ::open(image.path().c_str(), O_RDONLY | O_CLOEXEC);
    REQUIRE(fd >= 0);
    CHECK(::pread(fd, back.data(), back.size(), 8192) == static_cast<ssize_t>(back.size()));
    ::close(fd);
    CHECK(back == pattern);
}

TEST_CASE("loop: a read-only loop refuses writes and detaches", "[loop]") {
    REQUIRE(::geteuid() == 0);
    ScratchImage image("ro");
    auto loop = LoopDevice::attach(image.path(), AttachOptions{.read_only = true});
    INFO((loop.ok() ? std::string() : loop.error().message()));
    REQUIRE(loop.ok());
    const int number = loop->number();
    CHECK(read_line("/sys/block/loop" + std::to_string(number) + "/ro") == "1");
    auto bound = LoopDevice::list_bound();
    REQUIRE(bound.ok());
    auto it = std::find_if(bound->begin(), bound->end(),
                           [&](const auto& s) { return s.number == number; });
    REQUIRE(it != bound->end());
    CHECK(it->read_only);

    // Depending on the kernel the open or the write is refused; either way nothing is written.
    const int fd = ::open(loop->path().c_str(), O_WRONLY | O_CLOEXEC);
    if (fd < 0) {
        const int err = errno;
        CHECK((err == EROFS || err == EACCES || err == EPERM));
    } else {
        const char byte = 'x';
        const ssize_t n = ::pwrite(fd, &byte, 1, 0);
        const int err = errno;
        if (n >= 0) {
            // A buffered write may only fail at writeback; fsync must report it.
            CHECK(::fsync(fd) != 0);
        } else {
            CHECK((err == EPERM || err == EROFS));
        }
        ::close(fd);
    }
    REQUIRE(loop->detach().ok());
    CHECK(eventually([&] { return !loop_bound(number); }));
    CHECK(no_loop_on(image.path()));
}

TEST_CASE("loop: direct I/O is used where the file allows and never fails an attach", "[loop]") {
    REQUIRE(::geteuid() == 0);
    ScratchImage on_xfs("dio");
    auto loop =
        LoopDevice::attach(on_xfs.path(), AttachOptions{.read_only = true, .direct_io = true});
    INFO((loop.ok() ? std::string() : loop.error().message()));
    REQUIRE(loop.ok());
    CHECK(loop->direct_io());  // XFS on a 512-byte-sector disk can do O_DIRECT

    // Switched off and on while bound, as the agent does with an older agent's template loop.
    REQUIRE(loop->set_direct_io(false).ok());
    CHECK_FALSE(loop->direct_io());
    REQUIRE(loop->set_direct_io(true).ok());
    CHECK(loop->direct_io());

    // The VM's /tmp is overlayfs over tmpfs: 6.1 takes the flag for it and then fails every
    // direct read. attach proves direct I/O with a read and falls back to buffered I/O.
    ScratchImage on_tmpfs("dio-tmpfs", "/tmp");
    {
        std::ofstream out(on_tmpfs.path(), std::ios::binary | std::ios::in | std::ios::out);
        out << "bytes at the start of an overlay file";
    }
    auto buffered =
        LoopDevice::attach(on_tmpfs.path(), AttachOptions{.read_only = true, .direct_io = true});
    INFO((buffered.ok() ? std::string() : buffered.error().message()));
    REQUIRE(buffered.ok());
    CHECK(buffered->size_bytes() == kImageBytes);
    CHECK_FALSE(buffered->direct_io());
    CHECK(read_line(buffered->path()).rfind("bytes at the start of an overlay file", 0) == 0);
    loop->close();
    buffered->close();
    CHECK(no_loop_on(on_xfs.path()));
    CHECK(no_loop_on(on_tmpfs.path()));
}

TEST_CASE("loop: attach errors name the file and carry errno", "[loop]") {
    auto loop = LoopDevice::attach(scratch_dir() + "/" + prefix() + "-loop-missing.img",
                                   AttachOptions{.read_only = true});
    REQUIRE_FALSE(loop.ok());
    CHECK(loop.error().code() == ENOENT);
    CHECK(loop.error().message().rfind("attach " + scratch_dir(), 0) == 0);
}

TEST_CASE("loop: open_existing finds a loop by device and inode, not path", "[loop]") {
    REQUIRE(::geteuid() == 0);
    ScratchImage image("existing");
    ScratchImage other("existing-other");
    const std::string alias = scratch_dir() + "/" + prefix() + "-loop-existing-alias.img";
    ::unlink(alias.c_str());
    REQUIRE(::link(image.path().c_str(), alias.c_str()) == 0);
    struct Unlink {
        std::string path;
        ~Unlink() { ::unlink(path.c_str()); }
    } unlink_alias{alias};

    auto none = LoopDevice::open_existing(alias, true);
    REQUIRE(none.ok());
    CHECK_FALSE(none->has_value());

    auto loop = LoopDevice::attach(image.path(), AttachOptions{.read_only = true});
    REQUIRE(loop.ok());
    const int number = loop->number();

    auto found = LoopDevice::open_existing(alias, true);  // a second path to the same inode
    INFO((found.ok() ? std::string() : found.error().message()));
    REQUIRE(found.ok());
    REQUIRE(found->has_value());
    CHECK((*found)->number() == number);
    CHECK((*found)->device_number() == loop->device_number());

    auto wrong_mode = LoopDevice::open_existing(alias, false);  // bound read-only, asked rw
    REQUIRE(wrong_mode.ok());
    CHECK_FALSE(wrong_mode->has_value());
    auto other_file = LoopDevice::open_existing(other.path(), true);
    REQUIRE(other_file.ok());
    CHECK_FALSE(other_file->has_value());

    // The reused handle keeps the autoclear loop alive after the attacher closes...
    loop->close();
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    CHECK(loop_bound(number));
    // ...and it goes with the last opener.
    (*found)->close();
    CHECK(eventually([&] { return !loop_bound(number); }));
    auto after = LoopDevice::open_existing(image.path(), true);
    REQUIRE(after.ok());
    CHECK_FALSE(after->has_value());
}

TEST_CASE("loop: 8 acquires of one image share one loop; releasing all removes it", "[loop]") {
    REQUIRE(::geteuid() == 0);
    ScratchImage image("registry");
    LoopRegistry registry(wrenn::loop::make_kernel_image_attacher());
    // As the agent does: the image opened once and known by its inode.
    wrenn::UniqueFd fd(::open(image.path().c_str(), O_RDONLY | O_CLOEXEC));
    REQUIRE(fd.valid());
    struct stat st {};
    REQUIRE(::fstat(fd.get(), &st) == 0);
    const wrenn::loop::ImageFile file{image.path(), fd.get(), st.st_dev, st.st_ino};
    constexpr int kAcquires = 8;
    std::vector<std::string> devices(kAcquires);
    std::vector<std::string> errors(kAcquires);
    {
        std::latch start(kAcquires);
        std::vector<std::thread> threads;
        for (int i = 0; i < kAcquires; ++i) {
            threads.emplace_back([&, i] {
                start.arrive_and_wait();
                auto device = registry.acquire(file);
                if (device.ok()) {
                    devices[i] = device->device;
                } else {
                    errors[i] = device.error().message();
                }
            });
        }
        for (auto& t : threads) {
            t.join();
        }
    }
    for (const auto& e : errors) {
        CHECK(e.empty());
    }
    CHECK(std::set<std::string>(devices.begin(), devices.end()).size() == 1);
    CHECK(registry.references(file.key()) == kAcquires);
    CHECK(registry.attached() == 1);
    auto bound = loops_bound_to(image.path());
    REQUIRE(bound.size() == 1);
    CHECK(devices[0] == "/dev/loop" + std::to_string(bound[0]));
    CHECK(read_line("/sys/block/loop" + std::to_string(bound[0]) + "/ro") == "1");

    for (int i = 0; i < kAcquires; ++i) {
        registry.release(file.key());
    }
    CHECK(registry.attached() == 0);
    CHECK(eventually([&] { return !loop_bound(bound[0]); }));
    CHECK(no_loop_on(image.path()));
}

TEST_CASE("loop: a SIGKILLed process leaves no unused loop behind", "[loop]") {
    REQUIRE(::geteuid() == 0);
    ScratchImage image("killed");

    SECTION("killed while holding an attached loop") {
        int pipefd[2];
        REQUIRE(::pipe2(pipefd, O_CLOEXEC) == 0);
        const pid_t child = ::fork();
        REQUIRE(child >= 0);
        if (child == 0) {
            // No Catch macros in the child: report through the pipe and _exit.
            auto loop = LoopDevice::attach(image.path(), AttachOptions{.read_only = true});
            const int number = loop.ok() ? loop->number() : -1;
            (void)!::write(pipefd[1], &number, sizeof number);
            for (;;) {
                ::pause();
            }
        }
        ::close(pipefd[1]);
        int number = -1;
        CHECK(::read(pipefd[0], &number, sizeof number) == sizeof number);
        ::close(pipefd[0]);
        REQUIRE(number >= 0);
        CHECK(loop_bound(number));
        ::kill(child, SIGKILL);
        int status = 0;
        REQUIRE(::waitpid(child, &status, 0) == child);
        CHECK(WIFSIGNALED(status));
        CHECK(eventually([&] { return !loop_bound(number); }));
        CHECK(no_loop_on(image.path()));
    }

    SECTION("killed at random instants while attaching and closing") {
        std::mt19937 rng(12345);
        std::uniform_int_distribution<int> delay_us(0, 20000);
        for (int round = 0; round < 30; ++round) {
            const pid_t child = ::fork();
            REQUIRE(child >= 0);
            if (child == 0) {
                for (;;) {
                    auto loop = LoopDevice::attach(image.path(),
                                                   AttachOptions{.read_only = (round % 2) == 0});
                    if (!loop.ok()) {
                        ::_exit(3);
                    }
                }
            }
            std::this_thread::sleep_for(std::chrono::microseconds(delay_us(rng)));
            ::kill(child, SIGKILL);
            int status = 0;
            REQUIRE(::waitpid(child, &status, 0) == child);
            INFO("round " << round);
            CHECK_FALSE((WIFEXITED(status) && WEXITSTATUS(status) == 3));
        }
        CHECK(no_loop_on(image.path()));
    }
}

TEST_CASE("loop: threads attaching at once all get distinct loops", "[loop]") {
    REQUIRE(::geteuid() == 0);
    ScratchImage image("race");
    constexpr int kThreads = 8;
    for (int round = 0; round < 5; ++round) {
        std::vector<std::optional<LoopDevice>> loops(kThreads);
        std::vector<std::string> errors(kThreads);
        std::latch start(kThreads);
        std::vector<std::thread> threads;
        for (int i = 0; i < kThreads; ++i) {
            threads.emplace_back([&, i] {
                start.arrive_and_wait();
                auto loop = LoopDevice::attach(image.path(), AttachOptions{.read_only = true});
                if (loop.ok()) {
                    loops[i].emplace(std::move(*loop));
                } else {
                    errors[i] = loop.error().message();
                }
            });
        }
        for (auto& t : threads) {
            t.join();
        }
        std::set<int> numbers;
        for (int i = 0; i < kThreads; ++i) {
            INFO("round " << round << " thread " << i << ": " << errors[i]);
            REQUIRE(loops[i].has_value());
            numbers.insert(loops[i]->number());
        }
        CHECK(numbers.size() == static_cast<std::size_t>(kThreads));
        CHECK(loops_bound_to(image.path()).size() == static_cast<std::size_t>(kThreads));
    }
    CHECK(no_loop_on(image.path()));
}
