#!/usr/bin/env bash
# Install plaid from a build tree into a temporary prefix, then build and run, using only
# that prefix: a CMake project with find_package(plaid 0.1 CONFIG REQUIRED), a C program
# with pkg-config, and check that an incompatible version is refused; then a parent
# project that add_subdirectory()s the source tree, linking libplaid statically; last, a
# static install consumed with find_package.
#
#   run.sh BUILD_DIR SOURCE_DIR MODEL_FILE CARGO_TARGET_DIR
set -euo pipefail
build=$1 source=$2 model=$3 cargo_target=$4
work="$build/consumers"
rm -rf "$work"
mkdir -p "$work"
prefix="$work/prefix"

echo "== cmake --install into $prefix"
cmake --install "$build" --prefix "$prefix" >/dev/null
for f in lib/libplaid.so.2 lib/libplaid.so include/plaid.h include/plaid.hpp \
         lib/cmake/plaid/plaidConfig.cmake lib/cmake/plaid/plaidConfigVersion.cmake \
         lib/pkgconfig/plaid.pc; do
  [[ -e "$prefix/$f" ]] || { echo "missing after install: $f" >&2; exit 1; }
done
[[ "$(readlink "$prefix/lib/libplaid.so")" == libplaid.so.2 ]] || { echo "bad symlink" >&2; exit 1; }
soname=$(objdump -p "$prefix/lib/libplaid.so.2" 2>/dev/null | awk '/SONAME/ {print $2}' || true)
[[ -z "$soname" || "$soname" == libplaid.so.2 ]] || { echo "SONAME is $soname" >&2; exit 1; }

echo "== find_package(plaid 0.1 CONFIG REQUIRED)"
cmake -S "$source/tests/consumer/find_package" -B "$work/find_package" \
  -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_BUILD_RPATH="$prefix/lib" >/dev/null
cmake --build "$work/find_package" >/dev/null
"$work/find_package/consumer" "$model"

echo "== find_package(plaid 0.2) is refused"
if cmake -S "$source/tests/consumer/find_package" -B "$work/wrong_version" \
     -DCMAKE_PREFIX_PATH="$prefix" -DPLAID_WANT_VERSION=0.2 >/dev/null 2>&1; then
  echo "plaid 0.1.0 was accepted for find_package(plaid 0.2)" >&2
  exit 1
fi

echo "== pkg-config --cflags --libs plaid"
export PKG_CONFIG_PATH="$prefix/lib/pkgconfig"
flags=$(pkg-config --cflags --libs plaid)
cc -std=c99 -Wall -Wextra -Wpedantic -Werror "$source/tests/consumer/consumer.c" $flags \
  -Wl,-rpath,"$prefix/lib" -o "$work/pkgconfig_consumer"
"$work/pkgconfig_consumer" "$model"
c++ -std=c++17 -Wall -Wextra -Wpedantic -Werror "$source/tests/consumer/consumer.cpp" $flags \
  -Wl,-rpath,"$prefix/lib" -o "$work/pkgconfig_consumer_cpp"
"$work/pkgconfig_consumer_cpp" "$model"

echo "== add_subdirectory(plaid), static (BUILD_SHARED_LIBS=OFF)"
cmake -S "$source/tests/consumer/subdirectory" -B "$work/subdirectory" \
  -DPLAID_SOURCE_DIR="$source" -DPLAID_CARGO_TARGET_DIR="$cargo_target" \
  -DBUILD_SHARED_LIBS=OFF -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$work/subdirectory" >/dev/null
if ldd "$work/subdirectory/consumer" | grep -q libplaid; then
  echo "the static consumer links libplaid dynamically" >&2
  exit 1
fi
"$work/subdirectory/consumer" "$model"
echo "== static install (BUILD_SHARED_LIBS=OFF), then find_package"
cmake -S "$source" -B "$work/static_build" -DBUILD_SHARED_LIBS=OFF -DPLAID_BUILD_TESTS=OFF \
  -DPLAID_BUILD_EXAMPLES=OFF -DPLAID_CARGO_TARGET_DIR="$cargo_target" \
  -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$work/static_build" >/dev/null
cmake --install "$work/static_build" --prefix "$work/static_prefix" >/dev/null
[[ -f "$work/static_prefix/lib/libplaid.a" ]] || { echo "libplaid.a not installed" >&2; exit 1; }
cmake -S "$source/tests/consumer/find_package" -B "$work/find_package_static" \
  -DCMAKE_PREFIX_PATH="$work/static_prefix" >/dev/null
cmake --build "$work/find_package_static" >/dev/null
if ldd "$work/find_package_static/consumer" | grep -q libplaid; then
  echo "the static find_package consumer links libplaid dynamically" >&2
  exit 1
fi
"$work/find_package_static/consumer" "$model"
echo "consumers: all passed"
