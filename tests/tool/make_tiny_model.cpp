// Writes a tiny randomly initialised Hugging Face checkpoint folder (config.json,
// model.safetensors) with a real tokenizer copied beside it, for the fine-tuning smoke tests.
// Usage: make_tiny_model bert|bert-bare|llama|gpt2 TOKENIZER_FILE OUT_DIR
//   bert:  TOKENIZER_FILE is a vocab.txt (the vocabulary size follows it); bert-bare: the same
//          saved as a bare BertModel (no "bert." prefix, as sentence-transformers saves MiniLM)
//   llama: TOKENIZER_FILE is a tokenizer.json (byte-level BPE); eos is its last added token
//   gpt2:  the same tokenizer; the weights written by save_hf_model (Conv1D layout, [in, out])
#include <wegeft/io/hf_model.hpp>
#include <wegeft/io/safetensors.hpp>
#include <wegeft/nn/model.hpp>
#include <wegeft/text/tokenizer.hpp>

#include <cstdio>
#include <filesystem>
#include <fstream>

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: %s bert|bert-bare|llama|gpt2 TOKENIZER_FILE OUT_DIR\n", argv[0]);
    return 2;
  }
  namespace fs = std::filesystem;
  const std::string family = std::string(argv[1]) == "bert-bare" ? "bert" : argv[1],
                    tok_path = argv[2], out = argv[3];
  const bool bare = std::string(argv[1]) == "bert-bare";
  try {
    const auto tok = wegeft::text::Tokenizer::load(tok_path);
    const auto vocab = static_cast<wegeft::Index>(tok.vocab_size());
    fs::create_directories(out);
    nlohmann::ordered_json cfg;
    wegeft::ModelConfig c;
    if (family == "bert") {
      cfg = {{"model_type", "bert"},    {"architectures", {"BertModel"}}, {"hidden_size", 32},
             {"num_hidden_layers", 2},  {"num_attention_heads", 4},       {"intermediate_size", 64},
             {"vocab_size", vocab},     {"max_position_embeddings", 64},  {"type_vocab_size", 2},
             {"layer_norm_eps", 1e-12}, {"hidden_act", "gelu"},           {"pad_token_id", 0}};
      fs::copy_file(tok_path, fs::path(out) / "vocab.txt", fs::copy_options::overwrite_existing);
    } else if (family == "llama" || family == "gpt2") {
      if (family == "gpt2")
        cfg = {{"model_type", "gpt2"},
               {"architectures", {"GPT2LMHeadModel"}},
               {"n_embd", 32},
               {"n_layer", 2},
               {"n_head", 4},
               {"n_inner", 64},
               {"vocab_size", vocab},
               {"n_positions", 64},
               {"layer_norm_epsilon", 1e-5},
               {"activation_function", "gelu_new"}};
      else
        cfg = {{"model_type", "llama"},
               {"architectures", {"LlamaForCausalLM"}},
               {"hidden_size", 32},
               {"num_hidden_layers", 2},
               {"num_attention_heads", 4},
               {"num_key_value_heads", 2},
               {"intermediate_size", 64},
               {"vocab_size", vocab},
               {"max_position_embeddings", 64},
               {"rms_norm_eps", 1e-6},
               {"rope_theta", 10000.0},
               {"hidden_act", "silu"},
               {"tie_word_embeddings", true}};
      fs::copy_file(tok_path, fs::path(out) / "tokenizer.json",
                    fs::copy_options::overwrite_existing);
      const auto& added = tok.bpe()->added_tokens().tokens();
      nlohmann::ordered_json tc = {
          {"eos_token", added.empty() ? nullptr : nlohmann::json(added.back().content)},
          {"add_bos_token", false}};
      std::ofstream(fs::path(out) / "tokenizer_config.json") << tc.dump(2) << "\n";
    } else {
      std::fprintf(stderr, "family must be bert, bert-bare, llama or gpt2\n");
      return 2;
    }
    std::ofstream(fs::path(out) / "config.json") << cfg.dump(2) << "\n";
    c = wegeft::config_from_hf(nlohmann::json::parse(cfg.dump()), out);
    wegeft::Rng rng(1234);
    if (family == "gpt2") {
      // Random weights, unit LayerNorm scales, zero biases, through the library's HF writer
      // (which lays out GPT-2's Conv1D weights as transformers saves them).
      wegeft::Transformer<float> gpt(c);
      for (const auto& entry : gpt.tensors()) {
        const std::string& name = entry.first;
        wegeft::Matrix<float>& v = gpt.tensor(name);
        const bool norm = name.find("ln_") != std::string::npos;
        for (wegeft::Index i = 0; i < v.size(); ++i)
          v.data()[i] = name.ends_with(".bias")
                            ? 0.f
                            : (norm ? 1.f : static_cast<float>(0.05 * rng.normal()));
      }
      wegeft::save_hf_model(gpt, out);
      std::printf("%s: tiny gpt2, vocabulary %ld\n", out.c_str(), static_cast<long>(vocab));
      return 0;
    }
    const wegeft::Transformer<float> model(c);
    wegeft::SafetensorsBuilder st;
    for (const auto& [name, m] : model.tensors()) {
      wegeft::Matrix<float> v(m.rows(), m.cols());
      const bool norm =
          name.find("norm") != std::string::npos || name.find("LayerNorm") != std::string::npos;
      for (wegeft::Index i = 0; i < v.size(); ++i)
        v.data()[i] =
            norm ? (name.ends_with(".bias") ? 0.f : 1.f) : static_cast<float>(0.05 * rng.normal());
      const bool vector = m.rows() == 1 && (name.ends_with(".bias") || norm);
      const std::string stored = bare && name.rfind("bert.", 0) == 0 ? name.substr(5) : name;
      st.add(stored, wegeft::DType::F32, v,
             vector ? std::vector<std::int64_t>{m.cols()} : std::vector<std::int64_t>{});
    }
    st.write((fs::path(out) / "model.safetensors").string());
    std::printf("%s: tiny %s, vocabulary %ld\n", out.c_str(), family.c_str(),
                static_cast<long>(vocab));
    return 0;
  } catch (const wegeft::Error& e) {
    std::fprintf(stderr, "make_tiny_model: %s\n", e.message().c_str());
    return 1;
  }
}
