#include "loop/loop_registry.hpp"

#include <spdlog/spdlog.h>

namespace wrenn::loop {

std::string ImageFile::key() const {
    return std::to_string(device) + ":" + std::to_string(inode);
}

LoopRegistry::LoopRegistry(std::unique_ptr<ImageAttacher> attacher)
    : attacher_(std::move(attacher)) {}

LoopRegistry::~LoopRegistry() {
    std::lock_guard lock(mutex_);
    for (const auto& [key, entry] : entries_) {
        if (entry.references > 0) {
            spdlog::warn("loop registry destroyed while {} holds {} reference(s)", entry.path,
                         entry.references);
        }
    }
}

Result<SharedDevice> LoopRegistry::acquire(const ImageFile& image) {
    const std::string key = image.key();
    std::unique_lock lock(mutex_);
    for (;;) {
        auto it = entries_.find(key);
        if (it == entries_.end()) {
            break;
        }
        if (it->second.state == State::attached) {
            ++it->second.references;
            return SharedDevice{it->second.image->device(), it->second.image->size_bytes()};
        }
        // Another thread is attaching or releasing this image: wait, then look again (the
        // entry may be gone, attached, or its attach may have failed).
        changed_.wait(lock);
    }
    Entry attaching;  // state attaching: concurrent acquires wait for us
    attaching.path = image.path;
    entries_.emplace(key, std::move(attaching));
    lock.unlock();

    auto attached_image = attacher_->attach_read_only(image);

    lock.lock();
    auto it = entries_.find(key);  // still ours: nobody else touches an attaching entry
    if (!attached_image) {
        entries_.erase(it);
        changed_.notify_all();
        return std::move(attached_image).error().within("acquire " + image.path);
    }
    it->second.image = std::move(*attached_image);
    it->second.state = State::attached;
    it->second.references = 1;
    changed_.notify_all();
    spdlog::info("acquire {} (inode {}): attached {}", image.path, key, it->second.image->device());
    return SharedDevice{it->second.image->device(), it->second.image->size_bytes()};
}

void LoopRegistry::release(const std::string& key) {
    std::unique_ptr<AttachedImage> dropped;
    std::string image;
    {
        std::lock_guard lock(mutex_);
        auto it = entries_.find(key);
        if (it == entries_.end() || it->second.state != State::attached) {
            spdlog::warn("release of image {}: no reference held (ignored)", key);
            return;
        }
        image = it->second.path;
        if (--it->second.references > 0) {
            return;
        }
        it->second.state = State::releasing;
        dropped = std::move(it->second.image);
    }
    const std::string device = dropped->device();
    dropped.reset();  // may clear the loop (autoclear): outside the lock
    spdlog::info("release {}: dropped {}", image, device);
    std::lock_guard lock(mutex_);
    entries_.erase(key);
    changed_.notify_all();
}

std::size_t LoopRegistry::references(const std::string& key) const {
    std::lock_guard lock(mutex_);
    auto it = entries_.find(key);
    if (it == entries_.end() || it->second.state != State::attached) {
        return 0;
    }
    return it->second.references;
}

std::size_t LoopRegistry::attached() const {
    std::lock_guard lock(mutex_);
    std::size_t n = 0;
    for (const auto& [key, entry] : entries_) {
        n += entry.state == State::attached ? 1 : 0;
    }
    return n;
}

std::vector<std::pair<std::string, std::size_t>> LoopRegistry::entries() const {
    std::lock_guard lock(mutex_);
    std::vector<std::pair<std::string, std::size_t>> out;
    for (const auto& [key, entry] : entries_) {
        if (entry.state == State::attached) {
            out.emplace_back(key, entry.references);
        }
    }
    return out;
}

}  // namespace wrenn::loop
