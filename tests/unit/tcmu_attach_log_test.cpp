// The attach log in overlaybd's result file: for the CLI where the config says, for the API
// only beneath the config's own folder, never through a symlink.
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cerrno>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "tcmu/configfs.hpp"
#include "tcmu/configfs/naming.hpp"
#include "unit/fake_configfs.hpp"

namespace tcmu = wrenn::tcmu;
using namespace wrenn::tcmu::testing;

TEST_CASE("attach appends what it did to overlaybd's result file", "[tcmu]") {
    std::string tmpl = (std::filesystem::temp_directory_path() / "wrenn-tcmu-XXXXXX").string();
    REQUIRE(::mkdtemp(tmpl.data()) != nullptr);
    std::filesystem::path dir = tmpl;
    std::ofstream(dir / "config.v1.json") << R"({"lowers": [], "resultFile": "result"})";
    FakeKernel kernel;
    kernel.disk_appears = false;
    auto req = request();
    req.config_path = (dir / "config.v1.json").string();
    REQUIRE_FALSE(configfs(kernel).attach(req).ok());
    std::stringstream text;
    text << std::ifstream(dir / "result").rdbuf();
    std::filesystem::remove_all(dir);
    CHECK_THAT(text.str(), Catch::Contains("wrenn tcmu attach 123: mkdir " + kCore));
    CHECK_THAT(text.str(), Catch::Contains("failed: attach dev_123 as a disk"));
    CHECK_THAT(text.str(), Catch::Contains("cleanup: removed " + kCore));
}

namespace {

// A config folder for API attaches: allowed/cfg/config.v1.json, with a sentinel outside.
struct ApiConfigTree {
    std::filesystem::path root;
    std::filesystem::path allowed, dir, config, outside;
    explicit ApiConfigTree(const std::string& result_file) {
        std::string tmpl = (std::filesystem::temp_directory_path() / "wrenn-tcmu-XXXXXX").string();
        REQUIRE(::mkdtemp(tmpl.data()) != nullptr);
        root = tmpl;
        allowed = root / "allowed";
        dir = allowed / "cfg";
        std::filesystem::create_directories(dir);
        config = dir / "config.v1.json";
        std::ofstream(config) << R"({"lowers": [], "resultFile": ")" + result_file + R"("})";
        outside = root / "outside.log";
        std::ofstream(outside) << "sentinel\n";
    }
    ~ApiConfigTree() {
        std::error_code ec;
        std::filesystem::remove_all(root, ec);
    }
    [[nodiscard]] tcmu::AttachRequest request() const {
        auto req = ::request();
        req.config_path = config.string();
        tcmu::OriginPolicy policy;
        policy.config_dirs = {allowed.string()};
        policy.owner_uid = ::getuid();
        req.api_policy = policy;
        return req;
    }
    [[nodiscard]] static std::string read(const std::filesystem::path& p) {
        std::stringstream text;
        text << std::ifstream(p).rdbuf();
        return text.str();
    }
};

}  // namespace

TEST_CASE("an API attach logs to a resultFile inside the config's folder, 0600", "[tcmu]") {
    ApiConfigTree tree("result.log");
    FakeKernel kernel;
    kernel.disk_appears = false;
    REQUIRE_FALSE(configfs(kernel).attach(tree.request()).ok());
    const auto text = ApiConfigTree::read(tree.dir / "result.log");
    CHECK_THAT(text, Catch::Contains("wrenn tcmu attach 123: mkdir " + kCore));
    struct stat st {};
    REQUIRE(::stat((tree.dir / "result.log").c_str(), &st) == 0);
    CHECK((st.st_mode & 0777) == 0600);
    CHECK(ApiConfigTree::read(tree.outside) == "sentinel\n");
}

TEST_CASE("an API attach never logs outside the config's folder", "[tcmu]") {
    // Absolute, "..", and through a symlink (final and intermediate): the log goes to
    // init-debug.log beside the config, or nowhere; the sentinel outside is untouched.
    for (const std::string hostile : {"OUTSIDE", "../../outside.log", "cfg/../../outside.log",
                                      "link.log", "linkdir/outside.log"}) {
        INFO(hostile);
        ApiConfigTree tree(hostile == "OUTSIDE" ? std::string("") : hostile);
        if (hostile == "OUTSIDE") {
            std::ofstream(tree.config) << R"({"resultFile": ")" + tree.outside.string() + R"("})";
        }
        std::filesystem::create_symlink(tree.outside, tree.dir / "link.log");
        std::filesystem::create_symlink(tree.root, tree.dir / "linkdir");
        struct stat before {};
        REQUIRE(::stat(tree.outside.c_str(), &before) == 0);
        FakeKernel kernel;
        REQUIRE(configfs(kernel).attach(tree.request()).ok());
        CHECK(ApiConfigTree::read(tree.outside) == "sentinel\n");
        struct stat after {};
        REQUIRE(::stat(tree.outside.c_str(), &after) == 0);
        CHECK(after.st_mtim.tv_sec == before.st_mtim.tv_sec);
        CHECK(after.st_mtim.tv_nsec == before.st_mtim.tv_nsec);
        CHECK(after.st_size == before.st_size);
        if (hostile != "link.log" && hostile != "linkdir/outside.log") {
            CHECK_THAT(ApiConfigTree::read(tree.dir / "init-debug.log"),
                       Catch::Contains("wrenn tcmu attach 123:"));
        }
    }
}

TEST_CASE("an API attach does not create init-debug.log through a symlink", "[tcmu]") {
    ApiConfigTree tree("");
    std::filesystem::create_symlink(tree.root / "created-outside.log", tree.dir / "init-debug.log");
    FakeKernel kernel;
    REQUIRE(configfs(kernel).attach(tree.request()).ok());
    CHECK_FALSE(std::filesystem::exists(tree.root / "created-outside.log"));
}

// ---- A userspace handler must take the device before it is exported. --------------------------
