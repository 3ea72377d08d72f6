// plaid.hpp compiles on its own as C++17, and twice (the include guard works).
#include "plaid.hpp"
#include "plaid.hpp"

int plaid_hpp_compiles_alone() { return plaid::version().empty() ? 1 : 0; }
