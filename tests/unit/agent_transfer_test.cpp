#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "agent/cli/cli.hpp"
#include "agent/transfer/transfer.hpp"
#include "common/digest.hpp"
#include "dm/snapshot_format.hpp"
#include "flatten/exception_store.hpp"
#include "unit/agent_fixture.hpp"
#include "unit/flatten_cow_writer.hpp"

using namespace wrenn;
using namespace wrenn::agent;
using wrenn::agent::testing::TempDir;
namespace ft = wrenn::flatten::testing;

namespace {

using Bytes = std::vector<std::byte>;
constexpr std::uint64_t kOriginBytes = 1 << 20;  // 256 chunks

void save(const std::string& path, const Bytes& bytes) {
    std::ofstream(path, std::ios::binary)
        .write(reinterpret_cast<const char*>(bytes.data()),
               static_cast<std::streamsize>(bytes.size()));
}

Bytes load(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::string s((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    Bytes b(s.size());
    std::memcpy(b.data(), s.data(), s.size());
    return b;
}

Bytes origin_bytes(std::uint8_t seed = 0) {
    Bytes b(kOriginBytes);
    for (std::size_t i = 0; i < b.size(); ++i) {
        b[i] = static_cast<std::byte>(i * 13 + (i >> 12) + seed);
    }
    return b;
}

// Origin chunk -> its data in the sandbox, read through the CoW's exception store.
std::map<std::uint64_t, Bytes> sandbox_chunks(const std::string& cow) {
    auto store = flatten::read_exception_store_file(cow, kOriginBytes);
    REQUIRE(store.ok());
    const Bytes bytes = load(cow);
    std::map<std::uint64_t, Bytes> out;
    for (const auto& e : store->exceptions) {
        const auto at = bytes.begin() + static_cast<std::ptrdiff_t>(e.new_chunk * 4096);
        out[e.old_chunk] = Bytes(at, at + 4096);
    }
    return out;
}

struct Host {
    TempDir dir;
    std::string origin = dir.path() + "/base.img";
    std::string cow = dir.path() + "/cow";
    std::string archive = dir.path() + "/sb.wrenn";
    std::vector<std::uint64_t> changed{0, 3, 4, 100, 200, 255};

    Host() {
        save(origin, origin_bytes());
        auto image = ft::make_cow(ft::allocate_like_kernel(changed), 300);
        for (std::size_t i = 0; i < changed.size(); ++i) {
            ft::fill_chunk(image, 2 + i, static_cast<std::uint8_t>(changed[i]));
        }
        save(cow, image);
    }

    std::vector<std::string> files() const {
        std::vector<std::string> out;
        for (const auto& e : std::filesystem::directory_iterator(dir.path())) {
            out.push_back(e.path().filename().string());
        }
        std::sort(out.begin(), out.end());
        return out;
    }
};

struct Run {
    int status;
    std::string out;
    std::string err;
};

Run cli(std::vector<std::string> args, int stdin_fd = 0, int stdout_fd = 1) {
    std::ostringstream out;
    std::ostringstream err;
    const int status = run_transfer_cli(std::move(args), out, err, stdin_fd, stdout_fd);
    return {status, out.str(), err.str()};
}

}  // namespace

TEST_CASE("export then import: the new CoW holds the same chunks", "[transfer]") {
    Host h;
    const bool compress = GENERATE(true, false);
    std::vector<std::string> args{"export", "--cow", h.cow,    "--origin",
                                  h.origin, "--out", h.archive};
    if (!compress) {
        args.push_back("--no-compress");
    }
    auto exported = cli(args);
    INFO(exported.err);
    REQUIRE(exported.status == 0);
    CHECK_THAT(exported.out, Catch::Contains("6 changed chunks"));
    struct stat st {};
    REQUIRE(::stat(h.archive.c_str(), &st) == 0);
    CHECK((st.st_mode & 07777) == 0600);
    if (!compress) {
        CHECK(st.st_size == 72 + 8 + 6 * 4104 + 40);  // "base.img"
    }

    const std::string imported_cow = h.dir.path() + "/imported";
    auto imported = cli({"import", "--in", h.archive, "--origin", h.origin, "--cow", imported_cow});
    INFO(imported.err);
    REQUIRE(imported.status == 0);
    CHECK_THAT(imported.out,
               Catch::Contains("6 changed chunks") &&
                   Catch::Contains(testing::expected_blocks_digest(std::string(
                       reinterpret_cast<const char*>(origin_bytes().data()), kOriginBytes))));
    CHECK(sandbox_chunks(imported_cow) == sandbox_chunks(h.cow));
    REQUIRE(::stat(imported_cow.c_str(), &st) == 0);
    CHECK(static_cast<std::uint64_t>(st.st_size) == dm::cow_size_for_origin(kOriginBytes));
    CHECK((st.st_mode & 07777) == 0600);
    CHECK(h.files() == std::vector<std::string>{"base.img", "cow", "imported", "sb.wrenn"});
}

TEST_CASE("export to stdout and import from stdin", "[transfer]") {
    Host h;
    {
        UniqueFd out(::open(h.archive.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600));
        auto exported =
            cli({"export", "--cow", h.cow, "--origin", h.origin, "--out", "-"}, 0, out.get());
        REQUIRE(exported.status == 0);
        CHECK(exported.out.empty());  // stdout carries the archive only
        CHECK_THAT(exported.err, Catch::Contains("exported " + h.cow + " to -"));
    }
    UniqueFd in(::open(h.archive.c_str(), O_RDONLY | O_CLOEXEC));
    const std::string imported_cow = h.dir.path() + "/imported";
    auto imported =
        cli({"import", "--in", "-", "--origin", h.origin, "--cow", imported_cow}, in.get());
    INFO(imported.err);
    REQUIRE(imported.status == 0);
    CHECK(sandbox_chunks(imported_cow) == sandbox_chunks(h.cow));
}

TEST_CASE("import refuses a template with another digest, naming the one it needs", "[transfer]") {
    Host h;
    REQUIRE(cli({"export", "--cow", h.cow, "--origin", h.origin, "--out", h.archive}).status == 0);
    const std::string other = h.dir.path() + "/other.img";
    save(other, origin_bytes(1));
    const std::string needed = testing::expected_blocks_digest(
        std::string(reinterpret_cast<const char*>(origin_bytes().data()), kOriginBytes));
    auto r = cli({"import", "--in", h.archive, "--origin", other, "--cow", h.dir.path() + "/new"});
    CHECK(r.status == 1);
    CHECK_THAT(r.err, Catch::StartsWith("import: template " + other +
                                        ": the archive needs template \"base.img\" with digest " +
                                        needed + ", and this one has blocks-sha256-4k:"));
    // Not an errno's words ("already exists"), and the command named once.
    CHECK_THAT(r.err, !Catch::Contains("exists") && !Catch::Contains("import: import"));
    CHECK(h.files() == std::vector<std::string>{"base.img", "cow", "other.img", "sb.wrenn"});
}

TEST_CASE("a template whose size is not a multiple of 512 exports and imports, as over the API",
          "[transfer]") {
    // A loop device serves whole sectors, so the sandbox's origin is the image without its
    // 100-byte tail: the CLI and the API both take it so.
    Host h;
    Bytes tailed = origin_bytes();
    tailed.resize(kOriginBytes + 100, std::byte{7});
    save(h.origin, tailed);
    auto exported = cli({"export", "--cow", h.cow, "--origin", h.origin, "--out", h.archive});
    INFO(exported.err);
    REQUIRE(exported.status == 0);
    const std::string new_cow = h.dir.path() + "/new";
    auto imported = cli({"import", "--in", h.archive, "--origin", h.origin, "--cow", new_cow});
    INFO(imported.err);
    REQUIRE(imported.status == 0);
    CHECK(sandbox_chunks(new_cow) == sandbox_chunks(h.cow));
}

TEST_CASE("import of a truncated or damaged archive leaves no CoW behind", "[transfer]") {
    Host h;
    REQUIRE(cli({"export", "--cow", h.cow, "--origin", h.origin, "--out", h.archive}).status == 0);
    const Bytes good = load(h.archive);
    const std::string bad = h.dir.path() + "/bad.wrenn";
    const std::string new_cow = h.dir.path() + "/new";
    for (std::size_t cut : {std::size_t{0}, std::size_t{50}, good.size() / 2, good.size() - 1}) {
        CAPTURE(cut);
        save(bad, Bytes(good.begin(), good.begin() + static_cast<std::ptrdiff_t>(cut)));
        auto r = cli({"import", "--in", bad, "--origin", h.origin, "--cow", new_cow});
        CHECK(r.status == 1);
        CHECK_THAT(r.err, Catch::Contains("import: read archive at byte " + std::to_string(cut)));
        CHECK_FALSE(std::filesystem::exists(new_cow));
        CHECK(h.files() == std::vector<std::string>{"bad.wrenn", "base.img", "cow", "sb.wrenn"});
    }
    Bytes flipped = good;
    flipped[good.size() / 2] ^= std::byte{4};
    save(bad, flipped);
    auto r = cli({"import", "--in", bad, "--origin", h.origin, "--cow", new_cow});
    CHECK(r.status == 1);
    CHECK_THAT(r.err, Catch::Contains("read archive at byte"));
    CHECK(h.files() == std::vector<std::string>{"bad.wrenn", "base.img", "cow", "sb.wrenn"});
}

TEST_CASE("import never replaces an existing CoW", "[transfer]") {
    Host h;
    REQUIRE(cli({"export", "--cow", h.cow, "--origin", h.origin, "--out", h.archive}).status == 0);
    const Bytes before = load(h.cow);
    auto r = cli({"import", "--in", h.archive, "--origin", h.origin, "--cow", h.cow});
    CHECK(r.status == 1);
    CHECK_THAT(r.err, Catch::Contains("create " + h.cow + ": already exists"));
    CHECK(load(h.cow) == before);
    CHECK(h.files() == std::vector<std::string>{"base.img", "cow", "sb.wrenn"});
}

TEST_CASE("export of a never used CoW is an empty archive, imported as an empty store",
          "[transfer]") {
    Host h;
    save(h.cow, Bytes(300 * 4096));  // zero magic: the snapshot never wrote
    REQUIRE(cli({"export", "--cow", h.cow, "--origin", h.origin, "--out", h.archive}).status == 0);
    const std::string new_cow = h.dir.path() + "/new";
    REQUIRE(cli({"import", "--in", h.archive, "--origin", h.origin, "--cow", new_cow}).status == 0);
    auto store = flatten::read_exception_store_file(new_cow, kOriginBytes);
    REQUIRE(store.ok());
    CHECK(store->exceptions.empty());
    CHECK(store->chunk_bytes() == 4096);
}

TEST_CASE("export refuses an invalidated CoW and writes no archive", "[transfer]") {
    Host h;
    ft::CowHeader invalid;
    invalid.valid = 0;
    save(h.cow, ft::make_cow(ft::allocate_like_kernel({1}), 300, invalid));
    auto r = cli({"export", "--cow", h.cow, "--origin", h.origin, "--out", h.archive});
    CHECK(r.status == 1);
    CHECK_THAT(r.err, Catch::Contains("the kernel invalidated this snapshot"));
    CHECK(h.files() == std::vector<std::string>{"base.img", "cow"});
}

TEST_CASE("export and import: --help, usage errors, and the command line", "[transfer]") {
    auto help = cli({"export", "--help"});
    CHECK(help.status == 0);
    CHECK_THAT(help.out, Catch::Contains("--no-compress") && Catch::Contains("--out"));
    auto ihelp = cli({"import", "--help"});
    CHECK(ihelp.status == 0);
    CHECK_THAT(ihelp.out, Catch::Contains("--cow-size") && Catch::Contains("--in"));
    auto missing = cli({"import", "--in", "x"});
    CHECK(missing.status == 2);
    CHECK_THAT(missing.err,
               Catch::Contains("import: the option '--") && Catch::Contains("is required"));

    auto cmd = parse_command_line({"export", "--cow", "c"});
    REQUIRE(std::holds_alternative<Subcommand>(cmd));
    CHECK(std::get<Subcommand>(cmd).name == "export");
    CHECK(std::get<Subcommand>(cmd).args == std::vector<std::string>{"--cow", "c"});
    CHECK(std::holds_alternative<Subcommand>(parse_command_line({"import"})));
    CHECK_THAT(std::get<PrintAndExit>(parse_command_line({"--help"})).text,
               Catch::Contains("wrenn-agent export --cow FILE --origin FILE --out FILE|-") &&
                   Catch::Contains("wrenn-agent import --in FILE|- --origin FILE --cow FILE"));
}
