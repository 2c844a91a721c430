#include "agent/templates/template_guards.hpp"

#include <utility>

namespace wrenn::agent {

std::optional<TemplateGuards::Hold> TemplateGuards::share(const std::string& name) {
    std::lock_guard lock(mu_);
    Users& users = names_[name];
    if (!users.owner.empty()) {
        return std::nullopt;
    }
    ++users.shared;
    return Hold(this, name, false);
}

std::optional<TemplateGuards::Hold> TemplateGuards::own(const std::string& name) {
    std::lock_guard lock(mu_);
    if (names_.contains(name)) {
        return std::nullopt;  // an entry exists only while someone holds the name
    }
    names_[name].owner = "changed";
    return Hold(this, name, true);
}

std::string TemplateGuards::owner(const std::string& name) const {
    std::lock_guard lock(mu_);
    const auto it = names_.find(name);
    return it == names_.end() ? std::string() : it->second.owner;
}

void TemplateGuards::release(const std::string& name, bool alone) {
    std::lock_guard lock(mu_);
    const auto it = names_.find(name);
    if (it == names_.end()) {
        return;
    }
    if (alone) {
        it->second.owner.clear();
    } else if (it->second.shared > 0) {
        --it->second.shared;
    }
    if (it->second.owner.empty() && it->second.shared == 0) {
        names_.erase(it);
    }
}

TemplateGuards::Hold::Hold(Hold&& other) noexcept
    : guards_(std::exchange(other.guards_, nullptr)),
      name_(std::move(other.name_)),
      alone_(other.alone_) {}

TemplateGuards::Hold& TemplateGuards::Hold::operator=(Hold&& other) noexcept {
    if (this != &other) {
        if (guards_ != nullptr) {
            guards_->release(name_, alone_);
        }
        guards_ = std::exchange(other.guards_, nullptr);
        name_ = std::move(other.name_);
        alone_ = other.alone_;
    }
    return *this;
}

TemplateGuards::Hold::~Hold() {
    if (guards_ != nullptr) {
        guards_->release(name_, alone_);
    }
}

void TemplateGuards::Hold::describe(std::string doing) {
    if (guards_ == nullptr || !alone_) {
        return;
    }
    std::lock_guard lock(guards_->mu_);
    guards_->names_[name_].owner = std::move(doing);
}

}  // namespace wrenn::agent
