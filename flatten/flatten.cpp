#include "flatten/flatten.hpp"

#include <chrono>
#include <cstdio>
#include <utility>

namespace wrenn::flatten {

std::string describe_phases(const FlattenStats& stats) {
    auto ms = [](std::chrono::microseconds d) { return static_cast<double>(d.count()) / 1000.0; };
    char buf[160];
    std::snprintf(buf, sizeof buf,
                  "check %.1f ms, copy %.1f ms, apply %.1f ms, fsync+rename %.1f ms",
                  ms(stats.check), ms(stats.copy), ms(stats.apply), ms(stats.commit));
    return buf;
}

Result<FlattenStats> flatten(const std::string& origin_path, const std::string& cow_path,
                             const std::string& out) {
    using Clock = std::chrono::steady_clock;
    auto mark = Clock::now();
    // The time since the previous lap.
    auto lap = [&mark] {
        const auto now = Clock::now();
        return std::chrono::duration_cast<std::chrono::microseconds>(now -
                                                                     std::exchange(mark, now));
    };
    FlattenStats stats{};
    const std::string action = "flatten " + origin_path + " + " + cow_path + " into " + out;
    auto origin = open_read_only(origin_path);
    if (!origin) {
        return std::move(origin).error().within(action);
    }
    auto cow = open_read_only(cow_path);
    if (!cow) {
        return std::move(cow).error().within(action);
    }
    // Everything about the store is checked before an output file exists.
    auto store = read_exception_store(pread_reader(cow->fd.get(), cow_path), cow->size,
                                      origin->size, cow_path);
    if (!store) {
        return std::move(store).error().within(action);
    }
    stats.check = lap();
    auto output = PendingOutput::create(out);
    if (!output) {
        return std::move(output).error().within(action);
    }
    auto method = copy_image(*origin, output->fd());
    if (!method) {
        return std::move(method).error().within(action);
    }
    stats.copy = lap();
    std::size_t applied = 0;
    if (!store->empty) {
        auto n = apply_exceptions(cow->fd.get(), output->fd(), store->exceptions,
                                  store->chunk_bytes(), origin->size);
        if (!n) {
            return std::move(n).error().within(action);
        }
        applied = *n;
    }
    stats.apply = lap();
    if (auto committed = output->commit(); !committed) {
        return std::move(committed).error().within(action);
    }
    stats.commit = lap();
    stats.size_bytes = origin->size;
    stats.chunks_applied = applied;
    stats.method = *method;
    stats.chunk_bytes = store->chunk_bytes();
    stats.changed_chunks.reserve(store->exceptions.size());
    for (const auto& e : store->exceptions) {
        stats.changed_chunks.push_back(e.old_chunk);
    }
    return stats;
}

Result<CopiedFile> copy_file(const std::string& from, const std::string& out, Deadline deadline) {
    const std::string action = "copy " + from + " to " + out;
    auto source = open_read_only(from);
    if (!source) {
        return std::move(source).error().within(action);
    }
    if (source->block_device) {
        return Error(action, EINVAL, "not a regular file");
    }
    auto output = PendingOutput::create(out);
    if (!output) {
        return std::move(output).error().within(action);
    }
    auto method = copy_image(*source, output->fd(), CopyMethod::Reflink, deadline);
    if (!method) {
        return std::move(method).error().within(action);
    }
    return CopiedFile{std::move(output).value(), *method};
}

}  // namespace wrenn::flatten
