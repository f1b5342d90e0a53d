// Shared by the fuzz targets: the readers take paths, so each input goes through a file in
// /dev/shm (or the temp directory).
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>

inline std::string fuzz_write(const std::uint8_t* data, std::size_t size, const std::string& name) {
  static const std::string dir = [] {
    const std::string base = std::filesystem::exists("/dev/shm")
                                 ? "/dev/shm"
                                 : std::filesystem::temp_directory_path().string();
    const std::string d = base + "/wegeft-fuzz-" + std::to_string(::getpid());
    std::filesystem::create_directories(d);
    return d;
  }();
  const std::string path = dir + "/" + name;
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (size) std::fwrite(data, 1, size, f);
  std::fclose(f);
  return dir;
}
