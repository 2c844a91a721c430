// `wrenn-agent export` and `wrenn-agent import`: the sandbox archive on hosts without the API
// (or for an operator's script), over plain files, stdin and stdout; `wrenn-agent digest`: a
// template image's digest, for an upload.
#include <fcntl.h>
#include <unistd.h>

#include <boost/program_options.hpp>
#include <cerrno>
#include <optional>
#include <ostream>
#include <vector>

#include "agent/state/template_blocks.hpp"
#include "agent/state/template_image.hpp"
#include "agent/transfer/transfer.hpp"
#include "common/unique_fd.hpp"
#include "dm/snapshot_format.hpp"
#include "flatten/image_copy.hpp"

namespace wrenn::agent {
namespace {

namespace po = boost::program_options;

std::string base_name(const std::string& path) {
    const auto slash = path.rfind('/');
    return slash == std::string::npos ? path : path.substr(slash + 1);
}

// The template at `path` (the agent's rules: a regular file, no symlink, owned by this user,
// not writable by others), with its size and digest: the blocks digest, or with `whole` the
// SHA-256 of all of it (what a version 1 archive names).
Result<TemplateIdentity> identify_template(const std::string& path, bool whole = false) {
    auto image = open_template(path, ::geteuid());
    if (!image) {
        return std::move(image).error();
    }
    Result<std::string> digest = whole ? hash_whole(path, *image) : [&]() -> Result<std::string> {
        auto list = hash_blocks(path, *image, -1);  // only the agent keeps leaf hashes
        if (!list) {
            return std::move(list).error();
        }
        return list->digest();
    }();
    if (!digest) {
        return std::move(digest).error();
    }
    TemplateIdentity identity = image->identity;
    identity.digest = std::move(digest).value();
    return identity;
}

archive::ByteSink fd_sink(int fd, std::string name) {
    return [fd, name = std::move(name)](std::span<const std::byte> bytes) -> Result<void> {
        std::size_t done = 0;
        while (done < bytes.size()) {
            const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
            if (n < 0) {
                if (errno == EINTR) {
                    continue;
                }
                return errno_error("write " + name);
            }
            done += static_cast<std::size_t>(n);
        }
        return success();
    };
}

// Parses args against options; nullopt to go on, else the exit status (help printed, or a
// usage error).
std::optional<int> parse(const std::string& command, const std::vector<std::string>& args,
                         const po::options_description& options, std::ostream& out,
                         std::ostream& err) {
    po::variables_map vm;
    try {
        po::store(po::command_line_parser(args).options(options).run(), vm);
        if (vm.count("help") != 0) {
            out << options;
            return 0;
        }
        po::notify(vm);
    } catch (const po::error& e) {
        err << command << ": " << e.what() << "\n" << options;
        return 2;
    }
    return std::nullopt;
}

int run_digest(const std::vector<std::string>& args, std::ostream& out, std::ostream& err) {
    std::string image;
    po::options_description options(
        "digest: print a template image's blocks-sha256-4k digest, what PUT "
        "/templates/{name}?digest= takes (docs/archive.md)");
    options.add_options()("help,h", "show this help")(
        "image", po::value(&image)->required()->value_name("FILE"),
        "the image: a regular file, not a symlink, owned by this user and not writable by "
        "others; also the first argument without --image");
    std::vector<std::string> named = args;
    if (!named.empty() && !named.front().starts_with("-")) {
        named.front() = "--image=" + named.front();
    }
    if (auto status = parse("digest", named, options, out, err)) {
        return *status;
    }
    auto identity = identify_template(image);
    if (!identity) {
        err << "digest: " << identity.error().message() << "\n";
        return 1;
    }
    out << identity->digest << "\n";
    return 0;
}

int run_export(const std::vector<std::string>& args, std::ostream& out, std::ostream& err,
               int stdout_fd) {
    std::string cow;
    std::string origin;
    std::string output;
    bool no_compress = false;
    po::options_description options(
        "export: write a paused sandbox's changes as a sandbox archive (docs/archive.md)");
    options.add_options()("help,h", "show this help")(
        "cow", po::value(&cow)->required()->value_name("FILE"),
        "CoW file of the paused sandbox (its dm device removed)")(
        "origin", po::value(&origin)->required()->value_name("FILE"),
        "the template image the sandbox was made over")(
        "out", po::value(&output)->required()->value_name("FILE|-"),
        "archive to write (must not exist), or - for stdout")(
        "no-compress", po::bool_switch(&no_compress), "write the chunks without zstd");
    if (auto status = parse("export", args, options, out, err)) {
        return *status;
    }
    auto identity = identify_template(origin);
    if (!identity) {
        err << "export: " << identity.error().message() << "\n";
        return 1;
    }
    ExportSource source{cow, identity->served_bytes(), identity->digest, base_name(origin)};
    std::optional<flatten::PendingOutput> pending;
    int fd = stdout_fd;
    std::string name = "stdout";
    if (output != "-") {
        auto created = flatten::PendingOutput::create(output, 0600);
        if (!created) {
            err << "export: " << created.error().message() << "\n";
            return 1;
        }
        pending.emplace(std::move(created).value());
        fd = pending->fd();
        name = pending->temp_path();
    }
    auto stats = export_archive(source, !no_compress, fd_sink(fd, name));
    if (stats && pending) {
        if (auto ok = pending->commit(); !ok) {
            stats = std::move(ok).error();
        }
    }
    if (!stats) {
        err << "export: " << stats.error().message() << "\n";
        return 1;
    }
    // With the archive on stdout, the summary goes to stderr.
    (output == "-" ? err : out) << "exported " << cow << " to " << output << ": " << stats->chunks
                                << " changed chunks, " << stats->archive_bytes << " bytes"
                                << (no_compress ? "" : " (zstd)") << "\n";
    return 0;
}

int run_import(const std::vector<std::string>& args, std::ostream& out, std::ostream& err,
               int stdin_fd) {
    std::string input;
    std::string origin;
    std::string cow;
    std::uint64_t cow_size = 0;
    po::options_description options(
        "import: make a paused sandbox's CoW file from a sandbox archive (docs/archive.md)");
    options.add_options()("help,h", "show this help")(
        "in", po::value(&input)->required()->value_name("FILE|-"),
        "archive to read, or - for stdin")(
        "origin", po::value(&origin)->required()->value_name("FILE"),
        "the template image: the same content (SHA-256) as the exported sandbox's")(
        "cow", po::value(&cow)->required()->value_name("FILE"),
        "CoW file to create (must not exist; written only when the whole archive checks out)")(
        "cow-size", po::value(&cow_size)->value_name("BYTES"),
        "size of the CoW file (default: room for a full rewrite of the template, as the agent "
        "sizes it)");
    if (auto status = parse("import", args, options, out, err)) {
        return *status;
    }
    std::optional<UniqueFd> opened;
    int fd = stdin_fd;
    if (input != "-") {
        opened.emplace(::open(input.c_str(), O_RDONLY | O_CLOEXEC));
        if (!*opened) {
            err << "import: " << errno_error("open " + input).message() << "\n";
            return 1;
        }
        fd = opened->get();
    }
    std::optional<TemplateIdentity> identity;
    ArchiveImport import([&](const archive::Header& h) -> Result<ImportTarget> {
        auto id = identify_template(origin, h.version == archive::kWholeSha256Version);
        if (!id) {
            return std::move(id).error();
        }
        if (id->digest != h.template_digest_name()) {
            return Error("template " + origin, 0,
                         "the archive needs template \"" + h.template_name + "\" with digest " +
                             h.template_digest_name() + ", and this one has " + id->digest +
                             "; pass the exporting host's image as --origin");
        }
        identity = *id;
        const std::uint64_t origin_bytes = id->served_bytes();
        return ImportTarget{origin_bytes, cow,
                            cow_size != 0 ? cow_size : dm::cow_size_for_origin(origin_bytes)};
    });
    std::vector<std::byte> buffer(1 << 20);
    for (;;) {
        const ssize_t n = ::read(fd, buffer.data(), buffer.size());
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0) {
            err << "import: " << errno_error("read " + input).message() << "\n";
            return 1;
        }
        if (n == 0) {
            break;
        }
        if (auto ok = import.feed(std::span(buffer.data(), static_cast<std::size_t>(n))); !ok) {
            err << "import: " << ok.error().message() << "\n";
            return 1;
        }
    }
    auto stats = import.finish();
    if (!stats) {
        err << "import: " << stats.error().message() << "\n";
        return 1;
    }
    out << "imported " << input << " into " << cow << ": " << stats->chunks
        << " changed chunks over " << origin << " (" << identity->digest << ")\n";
    return 0;
}

}  // namespace

int run_transfer_cli(std::vector<std::string> args, std::ostream& out, std::ostream& err,
                     int stdin_fd, int stdout_fd) {
    const std::string command = args.empty() ? "" : args.front();
    if (!args.empty()) {
        args.erase(args.begin());
    }
    if (command == "export") {
        return run_export(args, out, err, stdout_fd);
    }
    if (command == "import") {
        return run_import(args, out, err, stdin_fd);
    }
    if (command == "digest") {
        return run_digest(args, out, err);
    }
    err << "wrenn-agent: unknown transfer command \"" << command << "\"\n";
    return 2;
}

}  // namespace wrenn::agent
