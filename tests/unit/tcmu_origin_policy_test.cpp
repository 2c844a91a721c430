// The API's TCMU allowlist: the pure checks (origin_policy.hpp) and the file-system half
// (open_config_beneath, open_beneath) over real files in a temporary folder. The owner check
// takes the test's own uid as "root", so none of this needs root.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cerrno>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "tcmu/configfs/config_file.hpp"
#include "tcmu/configfs/origin_policy.hpp"

namespace tcmu = wrenn::tcmu;
namespace fs = std::filesystem;

namespace {

struct TempTree {
    fs::path root;
    TempTree() {
        std::string tmpl = (fs::temp_directory_path() / "wrenn-policy-XXXXXX").string();
        REQUIRE(::mkdtemp(tmpl.data()) != nullptr);
        root = tmpl;
    }
    ~TempTree() {
        std::error_code ec;
        fs::remove_all(root, ec);
    }
    // Folders made 0755 whatever the umask: the config checks refuse group-writable ones.
    void folder(const fs::path& relative) const {
        fs::path at = root;
        for (const auto& part : relative) {
            at /= part;
            fs::create_directories(at);
            REQUIRE(::chmod(at.c_str(), 0755) == 0);
        }
    }
    fs::path file(const std::string& relative, const std::string& text = "{}",
                  mode_t mode = 0644) const {
        const fs::path path = root / relative;
        folder(fs::path(relative).parent_path());
        std::ofstream(path) << text;
        REQUIRE(::chmod(path.c_str(), mode) == 0);
        return path;
    }
};

tcmu::OriginPolicy policy_for(const fs::path& dir) {
    tcmu::OriginPolicy policy;
    policy.config_dirs = {dir.string()};
    policy.owner_uid = ::getuid();
    return policy;
}

int code_of(const wrenn::Result<tcmu::OpenedConfig>& r) {
    return r ? 0 : r.error().code();
}

}  // namespace

TEST_CASE("configfs values: no comma, newline or control character", "[tcmu][policy]") {
    CHECK(tcmu::check_control_value("config", "/a/b c/é.json").ok());
    for (const std::string& bad : std::vector<std::string>{
             "/a,b", "/a\nb", "/a\rb", "/a\tb", std::string("/a\0b", 4), "/a\x7f", "/a\x1b[31m"}) {
        auto r = tcmu::check_control_value("origin.config", bad);
        REQUIRE_FALSE(r.ok());
        CHECK(r.error().code() == EINVAL);
        CHECK_THAT(r.error().message(), Catch::Contains("origin.config"));
    }
    CHECK_THAT(tcmu::check_control_value("f", "a,b").error().message(), Catch::Contains("','"));
}

TEST_CASE("dev_config fits the kernel's 255 bytes and names a plain handler", "[tcmu][policy]") {
    // "overlaybd/" is 10 bytes: a 245-byte path makes exactly 255.
    const std::string fits = "/" + std::string(244, 'a');
    CHECK(tcmu::check_dev_config("overlaybd", fits).ok());
    auto over = tcmu::check_dev_config("overlaybd", fits + "a", "h", "origin.config");
    REQUIRE_FALSE(over.ok());
    CHECK(over.error().code() == EINVAL);
    CHECK_THAT(over.error().message(), Catch::Contains("origin.config") && Catch::Contains("256") &&
                                           Catch::Contains("255"));
    for (const std::string& bad :
         std::vector<std::string>{"", "a/b", "a,b", "a b", "a\n", std::string(65, 'h')}) {
        auto r = tcmu::check_dev_config(bad, "/c", "origin.handler", "origin.config");
        REQUIRE_FALSE(r.ok());
        CHECK(r.error().code() == EINVAL);
        CHECK_THAT(r.error().message(), Catch::Contains("origin.handler"));
    }
    CHECK(tcmu::check_dev_config("qcow", "").error().code() == EINVAL);
    CHECK(tcmu::check_dev_config("qcow", "/a,dev_size=1").error().code() == EINVAL);
}

TEST_CASE("no --tcmu-config-dir: every TCMU origin is refused, naming the flag", "[tcmu][policy]") {
    tcmu::OriginPolicy none;
    for (const std::string config : {"/etc/obd/c.json", "/a,b", "relative"}) {
        auto r = tcmu::check_origin_request(none, "overlaybd", config);
        REQUIRE_FALSE(r.ok());
        CHECK(r.error().code() == EACCES);
        CHECK_THAT(r.error().message(), Catch::Contains("--tcmu-config-dir"));
    }
}

TEST_CASE("a config must lie beneath an allowed folder, by a plain path", "[tcmu][policy]") {
    tcmu::OriginPolicy policy;
    policy.config_dirs = {"/srv/obd", "/opt/images"};
    auto ok = tcmu::locate_config(policy, "/opt/images/a/config.v1.json");
    REQUIRE(ok.ok());
    CHECK(ok->dir == "/opt/images");
    CHECK(ok->relative == "a/config.v1.json");

    for (const std::string dotted :
         {"/srv/obd/../etc/shadow", "/srv/obd/a/../../etc/x", "/srv/obd/..", "/srv/obd/./c",
          "/srv/obd//c", "/srv/obd/c/", "srv/obd/c", "", "/srv/obd/a/..", "/"}) {
        auto r = tcmu::locate_config(policy, dotted);
        REQUIRE_FALSE(r.ok());
        CHECK(r.error().code() == EINVAL);
    }
    for (const std::string outside : {"/etc/shadow", "/srv/obdX/c", "/srv/obd", "/srv"}) {
        auto r = tcmu::locate_config(policy, outside);
        REQUIRE_FALSE(r.ok());
        CHECK(r.error().code() == EACCES);
        CHECK_THAT(r.error().message(), Catch::Contains("/srv/obd, /opt/images"));
    }
}

TEST_CASE("only the allowed handlers, and the error names them", "[tcmu][policy]") {
    tcmu::OriginPolicy policy;
    policy.config_dirs = {"/srv/obd"};
    CHECK(tcmu::check_origin_request(policy, "overlaybd", "/srv/obd/c").ok());
    auto file = tcmu::check_origin_request(policy, "file", "/srv/obd/c");
    REQUIRE_FALSE(file.ok());
    CHECK(file.error().code() == EACCES);
    CHECK_THAT(file.error().message(),
               Catch::Contains("\"file\"") && Catch::Contains("allowed: overlaybd"));
    policy.handlers = {"overlaybd", "qcow"};
    CHECK(tcmu::check_origin_request(policy, "qcow", "/srv/obd/c").ok());
    CHECK_THAT(tcmu::check_handler(policy, "rbd").error().message(),
               Catch::Contains("overlaybd, qcow"));
    // A malformed value is a 400 (EINVAL) before the allowlist is asked.
    CHECK(tcmu::check_origin_request(policy, "qcow", "/srv/obd/a,b").error().code() == EINVAL);
    CHECK(tcmu::check_origin_request(policy, "qcow", "/srv/obd/a\nb").error().code() == EINVAL);
}

TEST_CASE("an API attach logs only beneath the config's own folder", "[tcmu][policy]") {
    using O = std::optional<std::string>;
    CHECK(tcmu::contained_result_file(O("result.log")) == "result.log");
    CHECK(tcmu::contained_result_file(O("logs/result.log")) == "logs/result.log");
    for (const O& outside : {O("/etc/profile.d/x.sh"), O("../x"), O("a/../../x"), O("./x"),
                             O("a//b"), O("a/"), O(""), O(std::nullopt), O("..")}) {
        CHECK(tcmu::contained_result_file(outside) == "init-debug.log");
    }
}

TEST_CASE("log values are escaped so they cannot forge lines", "[tcmu][policy]") {
    CHECK(tcmu::escape_for_log("plain /a b") == "plain /a b");
    CHECK(tcmu::escape_for_log("a\nrm -rf /\n") == "a\\x0arm -rf /\\x0a");
    CHECK(tcmu::escape_for_log("\r\x1b\x7f\\") == "\\x0d\\x1b\\x7f\\x5c");
}

TEST_CASE("a TCMU config folder (--tcmu-config-dir) is a plain absolute path", "[tcmu][policy]") {
    CHECK(*tcmu::normalize_config_dir("/srv/obd/") == "/srv/obd");
    CHECK(*tcmu::normalize_config_dir("/") == "/");
    for (const std::string bad : {"srv", "/srv/../etc", "/srv/./obd", "/srv//obd", ""}) {
        CHECK(tcmu::normalize_config_dir(bad).error().code() == EINVAL);
    }
}

TEST_CASE("an allowed config opens: a root-owned regular file, not group/other-writable",
          "[tcmu][policy]") {
    TempTree t;
    t.file("allowed/a/config.v1.json");
    t.file("allowed/top.json");
    auto policy = policy_for(t.root / "allowed");
    auto opened = tcmu::open_allowed_config(policy, (t.root / "allowed/a/config.v1.json").string());
    REQUIRE(opened.ok());
    CHECK(opened->name == "config.v1.json");
    CHECK(opened->file.valid());
    CHECK(opened->dir.valid());
    CHECK(tcmu::open_allowed_config(policy, (t.root / "allowed/top.json").string()).ok());
    CHECK(code_of(tcmu::open_allowed_config(policy, (t.root / "allowed/none.json").string())) ==
          ENOENT);
}

TEST_CASE("a config with a foreign owner or a loose mode is refused", "[tcmu][policy]") {
    TempTree t;
    const auto group_writable = t.file("allowed/g.json", "{}", 0664);
    const auto other_writable = t.file("allowed/o.json", "{}", 0646);
    const auto fine = t.file("allowed/f.json", "{}", 0600);
    auto policy = policy_for(t.root / "allowed");
    for (const auto& loose : {group_writable, other_writable}) {
        auto r = tcmu::open_allowed_config(policy, loose.string());
        REQUIRE_FALSE(r.ok());
        CHECK(r.error().code() == EACCES);
        CHECK_THAT(r.error().message(), Catch::Contains("chmod go-w"));
    }
    policy.owner_uid = ::getuid() + 1;  // the file's owner is not "root"
    auto foreign = tcmu::open_allowed_config(policy, fine.string());
    REQUIRE_FALSE(foreign.ok());
    CHECK(foreign.error().code() == EACCES);
    CHECK_THAT(foreign.error().message(), Catch::Contains("owned by uid"));
}

TEST_CASE("every folder from the allowed one down must be the owner's and not group/other-writable",
          "[tcmu][policy]") {
    TempTree t;
    const auto deep = t.file("allowed/a/b/config.json");
    auto policy = policy_for(t.root / "allowed");
    REQUIRE(tcmu::open_allowed_config(policy, deep.string()).ok());
    for (const std::string folder : {"allowed", "allowed/a", "allowed/a/b"}) {
        for (const mode_t loose : {0775, 0757, 01777}) {
            INFO(folder << " " << std::oct << loose);
            REQUIRE(::chmod((t.root / folder).c_str(), loose) == 0);
            auto r = tcmu::open_allowed_config(policy, deep.string());
            REQUIRE_FALSE(r.ok());
            CHECK(r.error().code() == EACCES);
            CHECK_THAT(r.error().message(), Catch::Contains((t.root / folder).string()) &&
                                                Catch::Contains("chmod go-w") &&
                                                Catch::Contains("--tcmu-config-dir"));
            REQUIRE(::chmod((t.root / folder).c_str(), 0755) == 0);
        }
    }
    // A folder above the allowed one is the operator's choice: the temp root is 0700 here, and
    // a loose one does not matter either.
    REQUIRE(::chmod(t.root.c_str(), 0777) == 0);
    CHECK(tcmu::open_allowed_config(policy, deep.string()).ok());
    REQUIRE(::chmod(t.root.c_str(), 0700) == 0);
    // Owned by someone else (the policy's owner is not us): the allowed folder is named.
    policy.owner_uid = ::getuid() + 1;
    auto foreign = tcmu::open_allowed_config(policy, deep.string());
    REQUIRE_FALSE(foreign.ok());
    CHECK(foreign.error().code() == EACCES);
    CHECK_THAT(foreign.error().message(),
               Catch::Contains("folder " + (t.root / "allowed").string() + " is owned by uid"));
}

TEST_CASE("symlinks at any level beneath the allowed folder are refused", "[tcmu][policy]") {
    TempTree t;
    const auto outside = t.file("outside/secret.json");
    t.file("allowed/real/config.json");
    fs::create_symlink(outside, t.root / "allowed/link.json");                  // final file
    fs::create_symlink(t.root / "outside", t.root / "allowed/linkdir");         // folder, out
    fs::create_symlink(t.root / "allowed/real", t.root / "allowed/innerlink");  // folder, in
    t.folder("allowed/real/deeper");
    std::ofstream(t.root / "allowed/real/deeper/c.json") << "{}";
    fs::create_symlink(t.root / "allowed/real/deeper", t.root / "allowed/real/mid");  // middle
    fs::create_symlink("config.json", t.root / "allowed/real/rel.json");  // relative, inside

    auto policy = policy_for(t.root / "allowed");
    for (const std::string via : {"link.json", "linkdir/secret.json", "innerlink/config.json",
                                  "real/mid/c.json", "real/rel.json"}) {
        INFO(via);
        auto r = tcmu::open_allowed_config(policy, (t.root / "allowed" / via).string());
        REQUIRE_FALSE(r.ok());
        CHECK(r.error().code() == EACCES);
        CHECK_THAT(r.error().message(), Catch::Contains("symlink"));
    }
    // The allowed folder itself may be reached through a symlink: it is the operator's choice.
    fs::create_symlink(t.root / "allowed", t.root / "alias");
    CHECK(tcmu::open_allowed_config(policy_for(t.root / "alias"),
                                    (t.root / "alias/real/config.json").string())
              .ok());
}

TEST_CASE("a config that is not a regular file is refused without blocking", "[tcmu][policy]") {
    TempTree t;
    t.folder("allowed/dir.json");
    REQUIRE(::mkfifo((t.root / "allowed/fifo.json").c_str(), 0600) == 0);
    auto policy = policy_for(t.root / "allowed");
    for (const char* name : {"dir.json", "fifo.json"}) {
        auto r = tcmu::open_allowed_config(policy, (t.root / "allowed" / name).string());
        REQUIRE_FALSE(r.ok());
        CHECK(r.error().code() == EACCES);
    }
}

TEST_CASE("open_beneath refuses symlinks and escapes with openat2 and with the walk",
          "[tcmu][policy]") {
    TempTree t;
    t.file("base/a/b/file");
    t.file("outside/file");
    fs::create_symlink(t.root / "outside", t.root / "base/a/out");
    fs::create_symlink(t.root / "outside/file", t.root / "base/a/b/flink");
    fs::create_symlink(t.root / "base/a/b", t.root / "base/blink");
    wrenn::UniqueFd base(::open((t.root / "base").c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
    REQUIRE(base.valid());
    for (auto resolver : {tcmu::Resolver::openat2, tcmu::Resolver::walk}) {
        INFO((resolver == tcmu::Resolver::walk ? "walk" : "openat2"));
        wrenn::UniqueFd ok(tcmu::open_beneath(base.get(), "a/b/file", O_RDONLY, 0, resolver));
        CHECK(ok.valid());
        for (const char* refused : {"a/out/file", "a/b/flink", "blink/file", "../base/a/b/file"}) {
            INFO(refused);
            errno = 0;
            wrenn::UniqueFd fd(tcmu::open_beneath(base.get(), refused, O_RDONLY, 0, resolver));
            CHECK_FALSE(fd.valid());
            CHECK((errno == ELOOP || errno == EXDEV || errno == ENOTDIR));
        }
        // Creating through a symlink: nothing appears at the symlink's target.
        fs::create_symlink(t.root / "outside/created", t.root / "base/a/dangling");
        wrenn::UniqueFd made(tcmu::open_beneath(base.get(), "a/dangling",
                                                O_WRONLY | O_CREAT | O_APPEND, 0600, resolver));
        CHECK_FALSE(made.valid());
        CHECK_FALSE(fs::exists(t.root / "outside/created"));
        fs::remove(t.root / "base/a/dangling");
    }
}
